<#
.SYNOPSIS
    Installs (or removes) the shelfsync store agent as a Windows service, run by NSSM.

.DESCRIPTION
    docs/operations.md, "Store PC (agent)" > "Windows". Run it in an elevated PowerShell (Run as
    administrator) on the store PC:

        .\install-agent-service.ps1 -Nssm C:\Tools\nssm.exe            # install (or update) and start
        .\install-agent-service.ps1 -Nssm C:\Tools\nssm.exe -Remove    # stop and remove the service

    What it does:
      1. a Python virtual environment in $Prefix with shelfsync[agent] (or the -Package you give);
      2. the data folder %ProgramData%\shelfsync (the agent's default: its configuration agent.toml,
         the outbox beside it, logs\agent.log); agent.toml must be there already
         (shelfsync-hub agent add --id ... --write agent.toml on the hub, then copied here);
      3. the service $Service: shelfsync-agent.exe run, as the virtual account NT SERVICE\$Service,
         started with Windows, restarted 5 s after a failure (not after a configuration error, exit
         code 2, or a second agent on the same outbox, exit code 3), stopped with Ctrl+C (the agent
         finishes its current work and exits 0), its output in logs\agent.log, rotated at 10 MB;
      4. permissions: the service account may change the data folder; agent.toml (it holds the token)
         is readable by that account and by Administrators and SYSTEM only.

    NSSM (the Non-Sucking Service Manager, nssm.cc) runs the console program as a service; the agent
    needs no pywin32. Download nssm.exe (win64) once and give its path with -Nssm.

.PARAMETER Nssm
    The path of nssm.exe (default: nssm.exe on the PATH).
.PARAMETER Prefix
    Where the agent's virtual environment is (created if missing). Default: C:\Program Files\shelfsync.
.PARAMETER Python
    The Python 3.11 or newer that creates the virtual environment, as a program and its arguments.
    Default: the py launcher, py -3 (e.g. -Python "C:\Program Files\Python312\python.exe" for another).
    It must be installed for all users (under C:\Program Files): the service account cannot read a Python
    in an administrator's profile (the python.org installer's default, or the Microsoft Store's).
.PARAMETER Package
    What pip installs: "shelfsync[agent]" from the package index, or a wheel file path with [agent].
.PARAMETER Service
    The service name. Default: shelfsync-agent.
.PARAMETER Remove
    Stop and remove the service (the data folder and the virtual environment are kept).
#>
[CmdletBinding()]
param(
    [string] $Nssm = "nssm.exe",
    [string] $Prefix = (Join-Path $env:ProgramFiles "shelfsync"),
    [string[]] $Python = @("py", "-3"),
    [string] $Package = "shelfsync[agent]",
    [string] $Service = "shelfsync-agent",
    [switch] $Remove
)

$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest

$Data = Join-Path $env:ProgramData "shelfsync"           # the agent's default configuration folder
$Config = Join-Path $Data "agent.toml"                   # its default configuration file
$Logs = Join-Path $Data "logs"
$Agent = Join-Path $Prefix "Scripts\shelfsync-agent.exe"
$Account = "NT SERVICE\$Service"

function Invoke-Checked([string] $What, [scriptblock] $Command) {
    & $Command
    if ($LASTEXITCODE -ne 0) { throw "$What failed with exit code $LASTEXITCODE" }
}

$admin = ([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()).IsInRole(
    [Security.Principal.WindowsBuiltInRole]::Administrator)
if (-not $admin) { throw "Run this script in an elevated PowerShell (Run as administrator)." }
$found = Get-Command $Nssm -ErrorAction SilentlyContinue
if (-not $found) { throw "nssm.exe not found at '$Nssm'; download it from nssm.cc and give its path with -Nssm." }
$NssmExe = $found.Source

if ($Remove) {
    & $NssmExe stop $Service | Out-Null
    Invoke-Checked "nssm remove" { & $NssmExe remove $Service confirm }
    Write-Host "Removed the service $Service; $Data and $Prefix are kept."
    return
}

# 1. The virtual environment with the agent.
if (-not (Test-Path $Agent)) {
    $pyArgs = @($Python | Select-Object -Skip 1)
    Invoke-Checked "creating the virtual environment" { & $Python[0] @pyArgs -m venv $Prefix }
}
# The service account must be able to read the Python the environment was made from: not one in a profile.
$venvHome = (@(Get-Content (Join-Path $Prefix "pyvenv.cfg")) -match '^home\s*=' | Select-Object -First 1) -replace '^home\s*=\s*', ''
if ($venvHome -and ($venvHome.StartsWith($env:USERPROFILE, [StringComparison]::OrdinalIgnoreCase) -or
        $venvHome.StartsWith($env:LOCALAPPDATA, [StringComparison]::OrdinalIgnoreCase))) {
    throw ("$Prefix uses the Python in $venvHome, inside a user's profile, which the service account cannot read: " +
        "install Python for all users (python.org installer: Customize installation, Install Python for all users), " +
        "remove $Prefix and run this script again.")
}
Invoke-Checked "pip install $Package" { & (Join-Path $Prefix "Scripts\python.exe") -m pip install --upgrade $Package }
Invoke-Checked "shelfsync-agent --version" { & $Agent --version }

# 2. The data folder and the configuration.
New-Item -ItemType Directory -Force -Path $Data, $Logs | Out-Null
if (-not (Test-Path $Config)) {
    throw ("Write the agent's configuration to $Config first: on the hub, shelfsync-hub agent add --id STORE-ID " +
        "--location CODE --write agent.toml, then copy that file here (docs/operations.md).")
}

# 3. The service (an existing one is updated in place).
$existing = Get-Service -Name $Service -ErrorAction SilentlyContinue
if ($existing) {
    & $NssmExe stop $Service | Out-Null
    Invoke-Checked "nssm set Application" { & $NssmExe set $Service Application $Agent }
} else {
    Invoke-Checked "nssm install" { & $NssmExe install $Service $Agent }
}
$settings = @(
    @("AppParameters", "run"),
    @("AppDirectory", $Data),
    @("DisplayName", "shelfsync store agent"),
    @("Description", "Records the store's stock movements in its outbox and sends them to the shelfsync hub."),
    @("Start", "SERVICE_AUTO_START"),
    @("AppStdout", (Join-Path $Logs "agent.log")),
    @("AppStderr", (Join-Path $Logs "agent.log")),
    @("AppRotateFiles", "1"),
    @("AppRotateOnline", "1"),
    @("AppRotateBytes", "10485760"),
    @("AppStopMethodSkip", "0"),
    @("AppStopMethodConsole", "30000"),   # Ctrl+C, then up to 30 s for a graceful stop
    @("AppStopMethodWindow", "5000"),
    @("AppStopMethodThreads", "5000"),
    @("AppThrottle", "10000"),
    @("AppRestartDelay", "5000"),
    @("AppEnvironmentExtra", "PYTHONUNBUFFERED=1")
)
foreach ($setting in $settings) {
    Invoke-Checked "nssm set $($setting[0])" { & $NssmExe set $Service $setting[0] $setting[1] }
}
Invoke-Checked "nssm set AppExit Default" { & $NssmExe set $Service AppExit Default Restart }
Invoke-Checked "nssm set AppExit 2" { & $NssmExe set $Service AppExit 2 Exit }   # a configuration error
Invoke-Checked "nssm set AppExit 3" { & $NssmExe set $Service AppExit 3 Exit }   # another agent runs on the outbox
Invoke-Checked "sc.exe config obj" { & sc.exe config $Service obj= $Account }

# 4. Permissions: the service account changes the data folder; the token stays private.
Invoke-Checked "icacls $Data" { & icacls $Data /grant "${Account}:(OI)(CI)M" }
Invoke-Checked "icacls $Config" {
    & icacls $Config /inheritance:r /grant:r "*S-1-5-32-544:(F)" "*S-1-5-18:(F)" "${Account}:(R)"
}

Invoke-Checked "nssm start" { & $NssmExe start $Service }
Start-Sleep -Seconds 5
& $Agent status
Write-Host "The service $Service runs $Agent run; its log is $(Join-Path $Logs 'agent.log')."
