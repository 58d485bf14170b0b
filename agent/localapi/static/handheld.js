/* shelfsync handheld page: talks to the agent's local API (docs/agent-api.md). Plain JS, nothing remote. */
"use strict";

(function () {
  const TYPES = {
    receive: "Receive",
    count: "Count",
    transfer_out: "Transfer out",
    transfer_in: "Transfer in",
    return: "Customer return",
    write_off: "Damage / write-off",
  };
  // Which fields of the open form each session type shows.
  const FIELDS = {
    receive: ["ref", "expected", "reader_id"],
    count: ["ref", "scope_skus", "bin", "reader_id"],
    transfer_out: ["ref", "to_location", "reader_id"],
    transfer_in: ["ref", "from_location", "reader_id"],
    return: ["ref", "reader_id"],
    write_off: ["reason", "ref", "reader_id"],
  };
  // A write-off's reference is a transfer's: an adjust carrying it books out a receipt of that transfer made here
  // by mistake (docs/faults.md); a transfer in under this store's own shipment's reference receives it back.
  const REF_HINT = {
    receive: "delivery note (a transfer, or your own shipment back: use Transfer in)",
    count: "optional",
    transfer_out: "transfer reference (required)",
    transfer_in: "transfer reference (required); your own shipment's to receive it back",
    return: "receipt number",
    write_off: "transfer reference, only when booking out goods received at the wrong store",
  };
  const BOOK_OUT_REASON = "received by mistake, sent on";  // the write-off that books a wrong-store receipt out
  const SESSION_POLL_MS = 3000;
  const QTY_IDLE_MS = 1500;  // after typing a quantity, the focus goes back to the scan field
  const STATUS_POLL_MS = 10000;
  // A wedge types a scan into the scan field key by key and ends it with Enter, as a scanner's suffix ends it at the
  // agent's readers: text left in the field without its Enter this long is a scan cut off (the agent waits as long
  // for a suffix, SUFFIX_WAIT_S), and keys of one run this close together on average are a scanner's, never a
  // person's typing (a fast typist's keys are some 100 ms apart).
  const CUT_OFF_MS = 1000;
  const WEDGE_KEY_MS = 50;

  const $ = (id) => document.getElementById(id);
  const state = {
    me: null, session: null, openType: null, readers: [], pollTimer: null, statusTimer: null, busy: false, pending: 0,
    unsent: [],  // scans refused for want of a sign-in (the agent restarted): sent again once signed in
    lastScan: null,  // the code of the scan before, and when it was made: a trigger bounce repeats it (bounced)
    runs: [],  // the scan field's text as typed, in runs of keys without a pause (noteTyping); null: not all typed
    unstored: [],  // scans the agent could not store (507: its disk is full): shown, sent again when the staff say
    scannerUnstored: [],  // the session's scanner's scans the full disk refused (its view's unstored), kept by the agent
    queue: Promise.resolve(),  // scans waiting to be sent, in order
    lines: [],  // the session's lines as last shown (the newest of them)
  };

  // --- HTTP ---------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message, code, retryAfterS) {
      super(message);
      this.status = status;
      this.code = code || null;
      this.retryAfterS = retryAfterS === undefined ? null : retryAfterS;  // seconds, when the agent said when to come back
    }
  }

  async function api(method, path, body) {
    const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body || {});
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new ApiError(0, "The agent does not answer. Check the Wi-Fi and try again.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : "The agent answered HTTP " + response.status + ".";
      if (response.status === 401 && path !== "/api/v1/login") {
        showSignin();
      }
      throw new ApiError(response.status, sentence(message), data && data.error ? data.error.code : null,
        retryAfter(response.headers.get("Retry-After")));
    }
    return data;
  }

  // A Retry-After of seconds (the agent sends no dates), or null.
  function retryAfter(value) {
    if (value === null || !/^\s*\d+\s*$/.test(value)) return null;
    return Number(value);
  }

  function sentence(text) {
    const s = String(text || "").trim();
    if (!s) return "";
    const first = s.charAt(0).toUpperCase() + s.slice(1);
    return /[.!?]$/.test(first) ? first : first + ".";
  }

  // --- screens -------------------------------------------------------------------------
  function show(name) {
    for (const section of document.querySelectorAll(".screen")) {
      section.hidden = section.id !== "screen-" + name;
    }
    if (name !== "session") stopPolling();
    if (INNER_SCREENS.indexOf(name) >= 0 && !(history.state && history.state.inner)) history.pushState({ inner: true }, "");
    window.scrollTo(0, 0);
  }

  // The phone's Back button on a session (or the form opening one, or a report) returns to the home screen. It
  // left the page instead, and the scans still on their way over a slow Wi-Fi were dropped without a word.
  const INNER_SCREENS = ["open", "session", "report"];

  function backToHome() {
    if (!state.me || $("screen-home").hidden === false) return;
    if ($("confirm").open) $("confirm").close();
    showHome().catch((err) => message($("scan-msg"), err.message, "bad"));
  }

  function message(el, text, kind) {
    el.textContent = text;
    el.className = "msg" + (kind ? " msg-" + kind : "");
    el.hidden = !text;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function when(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  // --- sign in ---------------------------------------------------------------------------
  function showSignin() {
    state.me = null;
    $("signout").hidden = true;
    $("sync").hidden = true;
    $("where").textContent = "";
    $("who").textContent = "";
    show("signin");
    $("signin-staff").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const error = $("signin-error");
    error.hidden = true;
    try {
      await api("POST", "/api/v1/login", { staff: $("signin-staff").value.trim(), pin: $("signin-pin").value });
      $("signin-pin").value = "";
      await start();
      await sendUnsent();
    } catch (err) {
      message(error, err.message, "bad");
      $("signin-pin").select();
    }
  }

  async function signOut() {
    try {
      await api("POST", "/api/v1/logout", {});
    } catch (err) {
      /* signed out either way */
    }
    showSignin();
  }

  // --- status ----------------------------------------------------------------------------
  async function refreshStatus() {
    const pill = $("sync");
    try {
      const s = await api("GET", "/api/v1/status");
      let text, kind;
      if (s.hub_reachable === false) {
        text = "Offline · " + s.backlog + " waiting";
        kind = "bad";
      } else if (s.backlog > 0) {
        text = s.backlog + " to send";
        kind = "warn";
      } else if (s.hub_reachable === true) {
        text = "Synced";
        kind = "ok";
      } else {
        text = "Not synced yet";
        kind = "warn";
      }
      // The agent's disk is full: scans are stored in its disk reserve until it is spent, then refused.
      const reserve = s.disk_reserve;
      if (reserve && reserve.in_use) {
        text = reserve.spent ? "Disk full · scans refused" : "Disk full · " + text;
        kind = "bad";
      }
      pill.textContent = text;
      pill.className = "pill " + kind;
      pill.title = (s.last_sync_ms ? "Last sync " + when(s.last_sync_ms) : "No sync yet") +
        (reserve && reserve.in_use ? " · the agent's disk is full: free disk space" : "");
      pill.hidden = false;
    } catch (err) {
      if (err.status !== 401) {
        pill.textContent = "Agent not answering";
        pill.className = "pill bad";
        pill.hidden = false;
      }
    }
  }

  // --- home ----------------------------------------------------------------------------------
  async function showHome() {
    show("home");
    const list = $("active-list");
    const data = await api("GET", "/api/v1/sessions?state=active");
    list.replaceChildren();
    for (const s of data.sessions) {
      const button = el("button", "", null);
      button.type = "button";
      button.appendChild(el("b", "", TYPES[s.type] + (s.ref ? " · " + s.ref : "")));
      const bits = ["by " + s.by, "opened " + when(s.opened_ms)];
      if (s.to_location) bits.push("to " + s.to_location);
      if (s.from_location) bits.push("from " + s.from_location);
      if (s.reader_id) bits.push("scanner " + s.reader_id);
      if (s.status === "closing") bits.push("closing…");
      button.appendChild(el("span", "sub", bits.join(" · ")));
      // A scanner's lines held until someone checks their quantity: the session cannot be closed before.
      if (s.held) button.appendChild(el("span", "sub held", s.held + (s.held === 1 ? " line" : " lines") + " held from a scanner: check the quantity"));
      // A scanner's scans a full disk refused: the agent keeps them until someone sends them from the session.
      if (s.unstored) button.appendChild(el("span", "sub held", s.unstored + (s.unstored === 1 ? " scan" : " scans") +
        " from a scanner not stored (the disk is full): open the session to send " + (s.unstored === 1 ? "it" : "them") + " again"));
      // A scanner's scans the session did not take: the scanner beeped at them all the same.
      if (s.not_added) button.appendChild(el("span", "sub held", s.not_added + (s.not_added === 1 ? " scan" : " scans") +
        " from a scanner NOT added: open the session to see " + (s.not_added === 1 ? "it" : "them")));
      button.addEventListener("click", () => openSession(s.id));
      const item = el("li");
      item.appendChild(button);
      list.appendChild(item);
    }
    $("active-empty").hidden = data.sessions.length > 0;
    showRefused(data.refused || []);
  }

  // What the hub refused after a close (a count of a bundle while the agent had never heard the hub's bundles):
  // the session is closed, so the staff learn it here, in the hub's own words, until one of them dismisses it
  // (the agent records that; the refusal itself stays on record).
  function showRefused(refused) {
    const list = $("refused-list");
    list.replaceChildren();
    for (const r of refused) {
      const item = el("li", "refusal");
      item.appendChild(el("span", "", r.kind + " of " + r.sku + " (" + r.qty + ") on " + when(r.refused_ms) + ": " +
        r.reason));
      const dismiss = el("button", "secondary dismiss", "Dismiss");
      dismiss.type = "button";
      dismiss.setAttribute("aria-label", "Dismiss the refusal of the " + r.kind + " of " + r.sku);
      dismiss.addEventListener("click", () => dismissRefused(r, dismiss, item));
      item.appendChild(dismiss);
      list.appendChild(item);
    }
    $("refused").hidden = refused.length === 0;
  }

  async function dismissRefused(r, button, item) {
    button.disabled = true;
    try {
      await api("POST", "/api/v1/refused/" + encodeURIComponent(r.event_id) + "/dismiss");
    } catch (err) {
      button.disabled = false;
      if (err.status !== 401) item.appendChild(el("span", "refusal-error", err.message));
      return;
    }
    await showHome();
  }

  async function lookUp(event) {
    event.preventDefault();
    const sku = $("lookup-sku").value.trim();
    const out = $("lookup-result");
    try {
      const c = await api("GET", "/api/v1/skus/" + encodeURIComponent(sku) + "/count");
      const pending = (c.pending_events ? " (" + c.pending_events + " not yet at the hub)" : "") +
        (c.stale_events ? " (" + c.stale_events + " at the hub, its count being read again)" : "");
      message(out, c.sku + " at " + c.location + ": " + c.on_hand + " on hand, " + c.available + " available" +
        (c.in_transit ? ", " + c.in_transit + " in transit" : "") + pending + ".", "good");
    } catch (err) {
      message(out, err.message, "bad");
    }
  }

  // --- opening a session --------------------------------------------------------------------
  function showOpen(type) {
    state.openType = type;
    const form = $("open-form");
    form.reset();
    $("open-title").textContent = "New " + TYPES[type].toLowerCase() + " session";
    $("ref-hint").textContent = REF_HINT[type];
    for (const label of form.querySelectorAll("label[data-for]")) {
      const name = label.dataset.for;
      label.hidden = FIELDS[type].indexOf(name) < 0 || (name === "reader_id" && state.readers.length === 0);
    }
    // The type's fields in its order, the first focused: a write-off's reason before its reference, which most
    // write-offs leave empty.
    for (const name of FIELDS[type]) form.insertBefore(form.querySelector("label[data-for=" + name + "]"), $("open-error"));
    const select = form.elements.reader_id;
    select.replaceChildren(new Option("none", ""));
    for (const r of state.readers) {
      const option = new Option(r.id + (r.session ? " (busy)" : ""), r.id);
      option.disabled = Boolean(r.session);
      select.appendChild(option);
    }
    $("open-error").hidden = true;
    show("open");
    const first = form.querySelector("label:not([hidden]) input, label:not([hidden]) select, label:not([hidden]) textarea");
    if (first) first.focus();
  }

  // Digits of other scripts as the ASCII digits they are: a phone set to Arabic or Persian types "١٢" or "۱۲", an
  // input method full-width "１２" (the agent reads PINs and barcodes so typed the same way).
  const DIGIT_ZEROS = [0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66, 0xe50,
    0xed0, 0xf20, 0x1040, 0x17e0, 0x1810, 0xff10];
  function asciiDigits(text) {
    return text.replace(/\p{Nd}/gu, (c) => {
      const code = c.codePointAt(0);
      const zero = DIGIT_ZEROS.find((z) => code >= z && code < z + 10);
      return zero === undefined ? c : String(code - zero);
    });
  }

  function parseExpected(text) {
    const lines = [];
    for (const raw of text.split(/\n/)) {
      const line = raw.trim();
      if (!line) continue;
      const match = line.match(/^(.*\S)\s+(\p{Nd}+)$/u);  // the quantity's digits in any script; the SKU as typed
      if (!match) throw new ApiError(400, "Write each expected line as \"SKU quantity\", e.g. \"SKU-1 12\": " + line);
      lines.push({ sku: match[1], qty: parseInt(asciiDigits(match[2]), 10) });
    }
    return lines;
  }

  // A double tap on Open (or Enter pressed twice) must not open the session twice: the form sends once until
  // the agent answers.
  async function submitOpen(event) {
    event.preventDefault();
    const form = $("open-form");
    const submit = form.querySelector("button[type=submit]");
    if (submit.disabled) return;
    const type = state.openType;
    const body = { type };
    submit.disabled = true;
    try {
      for (const name of FIELDS[type]) {
        const value = form.elements[name].value.trim();
        if (!value) continue;
        if (name === "scope_skus") body.scope_skus = value.split(/\n/).map((s) => s.trim()).filter(Boolean);
        else if (name === "expected") body.expected = parseExpected(value);
        else body[name] = value;
      }
      // the book-out reason whatever its capitals and spaces, as the agent and the hub match it
      const bookOut = (body.reason || "").trim().split(/\s+/).join(" ").toLowerCase() === BOOK_OUT_REASON;
      if (type === "write_off" && bookOut && !body.ref) {
        throw new ApiError(400, "Type the transfer's reference (as on its papers) to book out goods received at the" +
          " wrong store.");
      }
      let data;
      try {
        data = await api("POST", "/api/v1/sessions", body);
      } catch (err) {
        // A delivery note or transfer received here before: received again only for a second delivery on it, when
        // the staff say so (the same note scanned on two days booked its goods twice).
        if (err.code !== "already_received") throw err;
        const earlier = err.message.replace(/ \(again: true\)\.?$/, ".");
        const answer = await confirmDialog(TYPES[type] + " " + body.ref + " again?", earlier + " Is this a second delivery?", false);
        if (!answer) {
          message($("open-error"), earlier, "warn");
          return;
        }
        data = await api("POST", "/api/v1/sessions", Object.assign({}, body, { again: true }));
      }
      await openSession(data.session.id);
    } catch (err) {
      message($("open-error"), err.message, "bad");
    } finally {
      submit.disabled = false;
    }
  }

  // --- a session -------------------------------------------------------------------------------
  async function openSession(id) {
    const view = await api("GET", "/api/v1/sessions/" + encodeURIComponent(id));
    if (view.session.status === "closed") {
      showReport(view.session);
      return;
    }
    state.session = view.session;
    const s = view.session;
    $("session-title").textContent = TYPES[s.type] + (s.ref ? " · " + s.ref : "");
    const sub = ["opened by " + s.by];
    if (s.to_location) sub.push("to " + s.to_location);
    if (s.from_location) sub.push("from " + s.from_location);
    if (s.reason) sub.push("reason: " + s.reason);
    if (s.bin) sub.push("bin " + s.bin);
    if (s.scope_skus.length) sub.push(s.scope_skus.length + " SKUs in scope");
    if (s.reader_id) sub.push("scanner " + s.reader_id + " feeds this session");
    $("session-sub").textContent = sub.join(" · ");
    $("disposition").hidden = s.type !== "return";
    $("scan-qty").value = "1";
    $("scan-keyed").checked = false;
    updateScanPlaceholder();
    message($("scan-msg"), "", null);
    render(view);
    showUnstored();
    show("session");
    focusScan();
    startPolling();
  }

  function updateScanPlaceholder() {
    $("scan-code").placeholder = $("scan-keyed").checked ? "Type a SKU" : "Scan a barcode";
  }

  function focusScan() {
    const input = $("scan-code");
    if (!$("screen-session").hidden && document.activeElement !== input && !$("confirm").open) input.focus();
  }

  function render(view) {
    const s = view.session;
    const wasOpen = state.session && state.session.id === s.id && state.session.status === "open";
    state.session = s;
    state.lines = view.lines || [];
    if (wasOpen && s.status !== "open" && !state.busy) {
      // Another handheld closed or cancelled it: say so, where a greyed-out field swallowed the next scans.
      const what = s.status === "closing" ? "is being closed" : "was " + s.status;
      message($("scan-msg"), "This session " + what + (s.closed_by ? " by " + s.closed_by : "") + "; it takes no more scans.", "warn");
    }
    const expected = {};
    for (const e of s.expected) expected[e.sku] = e.qty;
    const hasExpected = s.expected.length > 0;
    $("totals-expected-head").hidden = !hasExpected;
    const body = $("totals");
    body.replaceChildren();
    const usePreview = hasExpected || s.type === "count";  // shows what is short, or still to count
    const rows = usePreview ? view.preview : view.totals.map((t) => ({ sku: t.sku, qty: t.qty, disposition: t.disposition }));
    for (const r of rows) {
      const tr = el("tr", r.status && r.status !== "ok" ? r.status : "");
      tr.appendChild(el("td", "", r.sku + (r.disposition === "damaged" ? " (damaged)" : "")));
      tr.appendChild(el("td", "num", r.qty));
      if (hasExpected) tr.appendChild(el("td", "num", r.expected === null || r.expected === undefined ? "—" : r.expected));
      body.appendChild(tr);
    }
    const live = view.totals.reduce((n, t) => n + t.lines, 0);  // every line that counts, shown or not
    $("total-units").textContent = view.units + (view.units === 1 ? " unit" : " units");
    $("total-lines").textContent = live + (live === 1 ? " line" : " lines");
    const list = $("lines");
    list.replaceChildren();
    for (const line of view.lines.slice().reverse()) {
      const text = line.sku + " × " + line.qty + (line.barcode ? " · " + line.barcode : " · keyed") +
        (line.disposition ? " · " + line.disposition : "") + " · " + line.by + " · " + when(line.at_ms) +
        (line.pending ? " · held" : "");
      const item = el("li", line.pending ? "held" : line.undone ? "undone" : "", text);
      item.value = line.no;
      list.appendChild(item);
    }
    showHeld(view.held || [], s);
    showNotAdded(view.not_added || []);
    state.scannerUnstored = view.unstored || [];
    showUnstored();
    const closing = s.status !== "open";
    // A session left closing (its movements booked, the mark refused: a full disk) is closed again from here; closing
    // it again only marks it. Disabled, it stayed closing until the agent restarted.
    $("close").disabled = (closing && s.status !== "closing") || state.busy;
    $("cancel").disabled = closing || state.busy;
    $("undo").disabled = closing || state.busy || live === 0;
    // The scan field stays usable: a scan into a session no longer open is refused in the agent's words.
  }

  // A back-office scanner's line of a quantity a handheld would have been asked about (a GS1 label's count far past
  // the usual): the agent holds it, counting nothing, until someone here books it or rejects it. The session cannot
  // be closed meanwhile: such a line is never booked blindly, nor dropped.
  function showHeld(held, s) {
    const list = $("held-list");
    list.replaceChildren();
    for (const line of held) {
      const item = el("li", "refusal");
      item.appendChild(el("span", "", "Line " + line.no + ": " + line.qty + " × " + line.sku + " from " +
        line.source.replace(/^scanner:/, "scanner ") + " at " + when(line.at_ms) + " — " + sentence(line.held)));
      for (const [label, action] of [["Book it", "confirm"], ["Reject", "reject"]]) {
        const button = el("button", action === "confirm" ? "secondary dismiss" : "danger dismiss", label);
        button.type = "button";
        button.disabled = s.status !== "open" || state.busy;
        button.setAttribute("aria-label", label + " line " + line.no + " (" + line.qty + " × " + line.sku + ")");
        button.addEventListener("click", () => decideHeld(s.id, line, action, item));
        item.appendChild(button);
      }
      list.appendChild(item);
    }
    $("held").hidden = held.length === 0;
  }

  // The session's scanner's scans it did not take (cut off, a wrong check digit, outside a count's scope …): the
  // scanner beeped at each, and nobody at it reads the agent's log. Listed, newest first, until someone taps Seen.
  function showNotAdded(notAdded) {
    const items = notAdded.map((n) => el("li", "refusal", n.code + " from " + n.source.replace(/^scanner:/, "scanner ") +
      " at " + when(n.at_ms) + " — " + sentence(n.why)));
    $("not-added-list").replaceChildren(...items);
    const n = items.length;
    $("not-added-title").textContent = n + (n === 1 ? " scan" : " scans") + " from the scanner " +
      (n === 1 ? "was" : "were") + " NOT added to this session: scan " + (n === 1 ? "it" : "them") + " again.";
    $("not-added").hidden = n === 0;
  }

  async function seenNotAdded() {
    if (!state.session) return;
    const sessionId = state.session.id;
    try {
      const data = await api("POST", "/api/v1/sessions/" + sessionId + "/not_added/dismiss", {});
      if (state.session && state.session.id === sessionId) render(data);
    } catch (err) {
      if (err.status !== 401) message($("scan-msg"), err.message, "bad");
    }
    focusScan();
  }

  async function decideHeld(sessionId, line, action, item) {
    for (const button of item.querySelectorAll("button")) button.disabled = true;
    try {
      const data = await api("POST", "/api/v1/sessions/" + sessionId + "/lines/" + line.no + "/" + action, {});
      if (state.session && state.session.id === sessionId) render(data);
      message($("scan-msg"), (action === "confirm" ? "Booked" : "Rejected") + " line " + line.no + ": " + line.qty +
        " × " + line.sku + (action === "confirm" ? "; it is booked when the session closes." : "; it is kept, and never booked."),
        action === "confirm" ? "good" : "warn");
    } catch (err) {
      for (const button of item.querySelectorAll("button")) button.disabled = false;
      if (err.status !== 401) message($("scan-msg"), err.message, "bad");
    }
    focusScan();
  }

  // Scans are sent one at a time, in the order they were made; the field is free for the next scan at once
  // (a fast scanner operator must never have a scan merged into the previous one).
  function addScan(event) {
    event.preventDefault();
    const input = $("scan-code");
    let code = input.value.trim();
    const runs = state.runs;  // how it was typed (noteTyping); the field starts again from empty
    state.runs = [];
    if (code && state.session && state.busy) {  // this page is closing the session
      input.value = "";  // the next scan must not be typed onto this one
      message($("scan-msg"), code + " was not added: the session is being closed.", "bad");
    }
    if (!code || !state.session || state.busy) {
      focusScan();
      return;
    }
    const typedQty = $("scan-qty").value.trim();
    const qty = typedQuantity(typedQty);
    if (qty === null) {
      input.value = ""; // the next scan must not be typed onto this one
      message($("scan-msg"), code + " was not added: the quantity '" + typedQty + "' is not a whole number; type one (e.g. 12) and scan again.", "bad");
      focusScan();
      return;
    }
    const keyed = $("scan-keyed").checked;
    const cut = cutOff(input.value, runs);
    let note = "";
    if (cut && !wholeAfter(cut.head, cut.scan)) {
      input.value = "";
      state.lastScan = null;
      const said = cut.head + " was left in the scan field without its Enter (a scan cut off), and " + cut.scan +
        " typed onto it is likely the rest of that scan: nothing was added; scan the item again.";
      state.queue = state.queue.then(() => message($("scan-msg"), said, "bad"));
      focusScan();
      return;
    }
    if (cut) {  // the same item scanned again, or a whole barcode: the head left in the field goes, the scan is added
      code = cut.scan;
      note = cut.head + " before it was left in the scan field without its Enter (a scan cut off) and was not added.";
    }
    if (bounced(code, keyed)) {
      input.value = "";
      focusScan();
      return;
    }
    // made_ms: when the scan was made, by this page's clock; the agent measures a trigger bounce by it (scans queued
    // behind a slow agent arrive back to back, made seconds apart), and refuses one this page did not see itself.
    const body = { qty, scan_id: newScanId(), made_ms: Math.round(performance.timeOrigin + performance.now()) };
    body[keyed ? "sku" : "code"] = code;
    if (state.session.type === "return") {
      body.disposition = document.querySelector("input[name=disposition]:checked").value;
    }
    input.value = "";
    $("scan-qty").value = "1";
    const sessionId = state.session.id;
    state.pending += 1;
    state.queue = state.queue.then(() => sendScan(sessionId, code, body)).finally(() => { state.pending -= 1; });
    if (note) {
      state.queue = state.queue.then(() => {
        const shown = $("scan-msg");
        message(shown, shown.textContent + " " + note, shown.classList.contains("msg-bad") ? "bad" : "warn");
      });
    }
  }

  // The scan field's text as it was typed: runs of keys, a new run after a pause of CUT_OFF_MS. Anything but keys
  // typed at its end (a paste, a deletion, an edit in the middle) leaves it unknown (null) until the field is empty.
  function noteTyping(event) {
    const input = $("scan-code");
    const now = performance.now();
    if (!input.value) {
      state.runs = [];
      return;
    }
    const data = event.inputType === "insertText" && event.data ? event.data : null;
    if (state.runs === null || data === null || input.selectionStart !== input.value.length) {
      state.runs = null;
      return;
    }
    const last = state.runs[state.runs.length - 1];
    if (!last || now - last.at > CUT_OFF_MS) {
      state.runs.push({ from: input.value.length - data.length, first: now, at: now, keys: 1 });
      return;
    }
    last.at = now;
    last.keys += 1;
  }

  // A scan typed onto text a wedge left in the field without its Enter (a scan cut off: the link dropped, the Enter
  // was lost): {head, scan}, else null. Only text typed at a scanner's pace is judged, every run of it two keys or
  // more under WEDGE_KEY_MS apart on average (a busy handheld delays a key now and then): a person typing pauses as
  // long, and their text is theirs (docs/scanners.md).
  function cutOff(value, runs) {
    if (!runs || runs.length < 2) return null;
    if (runs.some((r) => r.keys < 2 || (r.at - r.first) / (r.keys - 1) >= WEDGE_KEY_MS)) return null;
    const from = runs[runs.length - 1].from;
    const head = value.slice(0, from).trim();
    const scan = value.slice(from).trim();
    return head && scan ? { head, scan } : null;
  }

  // As the agent's readers judge the scan after a cut-off one (docs/scanners.md): the same item scanned again begins
  // as its cut-off head did, and a scan beginning with a symbology identifier, or a GTIN whose check digit holds, is
  // whole; after a head with an identifier, a scan without one is its tail. Anything else is the head's tail.
  function wholeAfter(head, scan) {
    if (head.startsWith("]")) return scan.startsWith("]");
    return scan.startsWith(head) || scan.startsWith("]") || checkedGtin(scan);
  }

  function checkedGtin(text) {
    const digits = asciiDigits(text);
    if (!/^\d+$/.test(digits) || [8, 12, 13, 14].indexOf(digits.length) < 0) return false;
    let sum = 0;
    for (let i = digits.length - 2, w = 3; i >= 0; i--, w = 4 - w) sum += Number(digits[i]) * w;
    return (10 - (sum % 10)) % 10 === Number(digits[digits.length - 1]);
  }

  // The quantity field is a text field (inputmode numeric): Chromium's number field dropped the digits a phone set to
  // Arabic or Persian types (the scan was added as 1). Digits of any script are read as the numbers they are; the
  // quantity then goes as typed (1.5 stays 1.5, 1e3 is 1000): the agent refuses what is not a whole number in its one
  // sentence. Empty is 1; text that is no number at all is null (refused here, in a sentence).
  function typedQuantity(typed) {
    const text = asciiDigits(typed);
    if (text === "") return 1;
    return /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(text) ? Number(text) : null;
  }

  // A trigger bounce: the same code again within the agent's same_code_s (GET /api/v1/me; [localapi] same_code_s) of
  // the scan before is one label read twice, typed by the wedge 30 ms after the first read, never a second item, as
  // at the agent's own scanners (docs/agent.md). Each scan is measured against the one right before it, so a scanner
  // stuck repeating a code adds it once; a quantity typed between two scans makes the second no bounce. Said after
  // the answer to the scan before (in the order of the scans), unless that one was refused: its sentence stays.
  function bounced(code, keyed) {
    const now = performance.now();
    const before = state.lastScan;
    state.lastScan = { code, keyed, at: now };
    const windowMs = state.me ? state.me.same_code_s * 1000 : 0;
    if (!before || before.code !== code || before.keyed !== keyed || !(now - before.at < windowMs)) return false;
    const said = code + " was not added: the same code came right after the scan before it (" +
      Math.round(now - before.at) + " ms), faster than anyone scans two items (a trigger read one label twice); " +
      "if it was a second item, scan it again.";
    state.queue = state.queue.then(() => {
      if (!$("scan-msg").classList.contains("msg-bad")) message($("scan-msg"), said, "warn");
    });
    return true;
  }

  // Each scan carries its own id: when the Wi-Fi drops before the answer, the same scan is sent again and the
  // agent answers the line it already added instead of adding a second one.
  function newScanId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // randomUUID() needs a secure context, and the page is served over plain HTTP
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // A scan the agent does not answer (the Wi-Fi dropped, the agent restarting) is sent again, with its scan_id, until
  // it answers: given up after a few tries, it was dropped, and the next scan's "Added" hid that it ever failed.
  // So is a scan the agent turns away with 503 and Retry-After (it serves as many devices as it can), after the
  // seconds it says: shown as an error, the scan was lost. The scans behind it wait in order; the page says how many,
  // and asks before it is closed or reloaded. A 507 (the agent's disk is full) is not sent again by itself: sendScan.
  async function postScan(sessionId, body) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await api("POST", "/api/v1/sessions/" + sessionId + "/scans", body);
      } catch (err) {
        const busy = err.status === 503 && err.retryAfterS !== null;
        if (err.status !== 0 && !busy) throw err;
        if (attempt >= 3) {
          const waiting = state.pending + (state.pending === 1 ? " scan is" : " scans are");
          message($("scan-msg"), (busy ? "The agent is busy; " : "The agent does not answer; ") + waiting +
            " waiting and sent as soon as it " + (busy ? "has room" : "does") + " (do not scan them again).", "warn");
        }
        const waitMs = busy ? Math.min(Math.max(err.retryAfterS, 1) * 1000, 30000) : Math.min(500 * attempt, 5000);
        await new Promise((resolve) => setTimeout(resolve, waitMs));
      }
    }
  }

  async function sendScan(sessionId, code, body) {
    try {
      const data = await postConfirmed(sessionId, code, body);
      if (!data) return;
      const line = data.line;
      const unknown = line.unknown ? " — not in the catalog, kept as " + line.sku : "";
      if (state.session && state.session.id === sessionId) render(data);
      // A scan sent again after its answer was lost, into a session another handheld closed meanwhile: the agent
      // took it before the close, which booked it. Said so, it is not scanned into the next session as well.
      const meanwhile = afterScan(data.session);
      message($("scan-msg"), "Added " + line.qty + " × " + line.sku + unknown + meanwhile + ".", line.unknown || meanwhile ? "warn" : "good");
    } catch (err) {
      if (err.status === 401) {
        // The agent restarted (sign-ins live in its memory) and asks for a sign-in: the scan is kept and sent again,
        // with its scan_id, once someone signs in on this page. Dropped here, it was lost behind the sign-in screen.
        state.unsent.push({ sessionId, code, body });
        return;
      }
      if (err.status === 507) {
        // The agent's disk is full (507 Insufficient Storage): nothing was added, and sending it again changes
        // nothing until someone frees space, so it is not sent again by itself (as after a 503) nor dropped. It
        // stays on the page with the agent's sentence, and Send again sends it (by its scan_id: never twice).
        state.unstored.push({ sessionId, code, body, why: err.message });
        showUnstored();
        message($("scan-msg"), code + " was not added: the agent cannot store it; it is kept below to send again.", "bad");
        focusScan();
        return;
      }
      message($("scan-msg"), code + ": " + err.message, "bad");
    }
    focusScan();
  }

  // A quantity far past the usual (an extra zero, a barcode scanned into the quantity field): a write-off or transfer
  // out far beyond the agent's count on hand (exceeds_on_hand), a delivery line of more than 10,000 units or a count
  // far above the count on hand (unlikely_quantity). Added only when the staff say the quantity is right. Null when
  // they say No (nothing was added, and the page says so).
  async function postConfirmed(sessionId, code, body) {
    try {
      return await postScan(sessionId, body);
    } catch (err) {
      if (err.code !== "exceeds_on_hand" && err.code !== "unlikely_quantity") throw err;
      const said = err.message.split("; nothing was added")[0];
      const answer = await confirmDialog(
        "Add " + body.qty + " × " + code + "?",
        said.charAt(0).toUpperCase() + said.slice(1) + ". Is the quantity right?",
        false,
        true
      );
      if (!answer) {
        const why = said.charAt(0).toLowerCase() + said.slice(1);
        message($("scan-msg"), code + " was not added: " + why + "; check the quantity and scan it again.", "bad");
        focusScan();
        return null;
      }
      body.confirm = true; // kept if the agent asks for a sign-in first (sent again from state.unsent)
      return await postScan(sessionId, body);
    }
  }

  // The scans of this session the agent could not store (a full disk): this page's, and those of the session's
  // back-office scanner, whose operator reads no log (the agent keeps them: the view's unstored). What the agent
  // said, each scan, and Send again.
  function showUnstored() {
    const mine = state.unstored.filter((u) => state.session && u.sessionId === state.session.id);
    const scanner = state.session ? state.scannerUnstored : [];
    const items = mine.map((u) => el("li", "", u.code + " × " + u.body.qty + (u.body.sku ? " (typed SKU)" : "")))
      .concat(scanner.map((u) => el("li", "", u.code + " from " + u.source.replace(/^scanner:/, "scanner ") + " at " + when(u.at_ms))));
    $("unstored-list").replaceChildren(...items);
    const n = items.length;
    $("unstored-title").textContent = n + (n === 1 ? " scan was" : " scans were") + " not added: the agent cannot store " +
      (n === 1 ? "it" : "them") + ".";
    const last = mine.length ? mine[mine.length - 1].why : scanner.length ? sentence(scanner[scanner.length - 1].why) : "";
    $("unstored-why").textContent = last;
    $("unstored").hidden = n === 0;
  }

  function sendUnstored() {
    if (!state.session) return;
    const sessionId = state.session.id;
    const mine = state.unstored.filter((u) => u.sessionId === sessionId);
    state.unstored = state.unstored.filter((u) => mine.indexOf(u) < 0);
    const scanner = state.scannerUnstored.length;
    showUnstored();
    const n = mine.length + scanner;
    if (n) message($("scan-msg"), "Sending " + n + (n === 1 ? " scan" : " scans") + " again…", "warn");
    for (const u of mine) {
      state.pending += 1;
      state.queue = state.queue.then(() => sendScan(u.sessionId, u.code, u.body)).finally(() => { state.pending -= 1; });
    }
    if (scanner) state.queue = state.queue.then(() => sendScannerUnstored(sessionId));
    focusScan();
  }

  // The scanner's scans go back by the agent, which holds them (each by its scan_id: never added twice).
  async function sendScannerUnstored(sessionId) {
    try {
      const data = await api("POST", "/api/v1/sessions/" + sessionId + "/unstored", {});
      if (state.session && state.session.id === sessionId) render(data);
      const said = [];
      if (data.added.length) said.push("Added " + data.added.length + (data.added.length === 1 ? " scan" : " scans") + " from the scanner.");
      for (const r of data.refused) said.push(r.code + " from the scanner was not added: " + sentence(r.why));
      if (said.length) message($("scan-msg"), said.join(" "), data.refused.length ? "bad" : "good");
    } catch (err) {
      if (err.status !== 401) message($("scan-msg"), err.message, "bad");
    }
    focusScan();
  }

  async function sendUnsent() {
    const unsent = state.unsent;
    if (!unsent.length) return;
    state.unsent = [];
    try {
      await openSession(unsent[0].sessionId);
    } catch (err) {
      /* its scans below say what became of them */
    }
    message($("scan-msg"), unsent.length + (unsent.length === 1 ? " scan is" : " scans are") + " sent again after signing in.", "warn");
    for (const u of unsent) {
      state.pending += 1;
      state.queue = state.queue.then(() => sendScan(u.sessionId, u.code, u.body)).finally(() => { state.pending -= 1; });
    }
  }

  function afterScan(s) {
    const who = s.closed_by ? s.closed_by : "someone";
    if (s.status === "closed") return "; " + who + " closed the session meanwhile, and it is booked with this scan";
    if (s.status === "closing") return "; the session is being closed, and it is booked with this scan";
    if (s.status === "cancelled") return "; " + who + " cancelled the session meanwhile, so nothing of it is booked";
    return "";
  }

  async function undoLast() {
    if (!state.session) return;
    await state.queue;
    // The line shown as this person's newest that counts: Undo sent again after its answer was lost (the Wi-Fi
    // dropped) names the same line, undone already, and takes back no second one.
    let newest = null;
    for (const line of state.lines) {
      if (state.me && line.by === state.me.staff && !line.undone && (newest === null || line.no > newest)) newest = line.no;
    }
    try {
      const data = await api("POST", "/api/v1/sessions/" + state.session.id + "/undo", newest === null ? {} : { line: newest });
      message($("scan-msg"), data.undone ? "Undid " + data.undone.qty + " × " + data.undone.sku + "." : "Nothing to undo.", "warn");
      render(data);
    } catch (err) {
      message($("scan-msg"), err.message, "bad");
    }
    focusScan();
  }

  // safe: No has the focus, so the Enter of a scan made while the dialog is up does not answer Yes.
  function confirmDialog(title, text, withZero, safe) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-zero").hidden = !withZero;
    $("confirm-zero-box").checked = false;
    return new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => resolve(dialog.returnValue === "yes" ? { zero: $("confirm-zero-box").checked } : null),
        { once: true }
      );
      dialog.returnValue = "";
      dialog.showModal();
      $(safe ? "confirm-no" : "confirm-yes").focus();
    });
  }

  async function closeSession() {
    const s = state.session;
    if (!s) return;
    const isCount = s.type === "count" && s.scope_skus.length > 0;
    const unstored = state.unstored.filter((u) => u.sessionId === s.id).length + state.scannerUnstored.length;
    const answer = await confirmDialog(
      "Close this session?",
      "Its lines are booked as stock movements and cannot be changed afterwards." + (unstored ? " " + unstored +
        (unstored === 1 ? " scan was" : " scans were") + " not added (the agent could not store " +
        (unstored === 1 ? "it" : "them") + ") and " + (unstored === 1 ? "is" : "are") + " not booked: send " +
        (unstored === 1 ? "it" : "them") + " again first." : ""),
      isCount
    );
    if (!answer) {
      focusScan();
      return;
    }
    state.busy = true;
    await state.queue;
    try {
      const data = await api("POST", "/api/v1/sessions/" + s.id + "/close", { zero_unscanned: answer.zero });
      state.busy = false;
      showReport(data.session);
    } catch (err) {
      state.busy = false;
      try {  // as the close left it (open again, or closing: booked, and closed again from here)
        const view = await api("GET", "/api/v1/sessions/" + encodeURIComponent(s.id));
        if (state.session && state.session.id === s.id) {
          state.session = view.session;  // this page's own close: not said as another's
          render(view);
        }
      } catch (e) {
        /* the message below says what failed */
      }
      message($("scan-msg"), err.message, "bad");
      focusScan();
    }
  }

  async function cancelSession() {
    const s = state.session;
    if (!s) return;
    const answer = await confirmDialog("Cancel this session?", "Nothing of it is booked. Its lines are kept for the record only.", false);
    if (!answer) {
      focusScan();
      return;
    }
    try {
      await api("POST", "/api/v1/sessions/" + s.id + "/cancel", {});
      state.session = null;
      await showHome();
    } catch (err) {
      message($("scan-msg"), err.message, "bad");
    }
  }

  function showReport(s) {
    state.session = null;
    const r = s.report;
    $("report-title").textContent = TYPES[s.type] + (s.ref ? " · " + s.ref : "") + " closed";
    $("report-sub").textContent = r.events + (r.events === 1 ? " movement" : " movements") + " recorded, " + r.units +
      (r.units === 1 ? " unit" : " units") + ". They reach the hub with the next sync.";
    // A count that rests on an assumption (which bin the movements since the round's last count touched, or whether
    // the units moved between a SKU's first and last scan were among those counted): said aloud.
    const notes = (r.bin_notes || []).concat(r.count_notes || []);
    $("report-notes").replaceChildren(...notes.map((n) => el("p", "msg msg-warn", n.message)));
    const body = $("report-lines");
    body.replaceChildren();
    for (const line of r.lines) {
      const tr = el("tr", line.status);
      const sku = el("td", "", line.sku);
      sku.appendChild(el("span", "badge status-" + line.status, line.status.replace("_", " ")));
      tr.appendChild(sku);
      tr.appendChild(el("td", "num", line.qty));
      tr.appendChild(el("td", "num", line.expected === null ? "—" : line.expected));
      body.appendChild(tr);
    }
    show("report");
    $("report-done").focus();
  }

  // --- polling (a back-office scanner may add lines; the sync state changes) --------------------------
  function startPolling() {
    stopPolling();
    state.pollTimer = window.setInterval(async () => {
      if (!state.session || state.busy || document.hidden) return;
      try {
        render(await api("GET", "/api/v1/sessions/" + state.session.id));
      } catch (err) {
        /* the next poll tries again; errors of actions are shown where they happen */
      }
    }, SESSION_POLL_MS);
  }

  function stopPolling() {
    if (state.pollTimer) window.clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  // --- start ----------------------------------------------------------------------------------------
  async function start() {
    try {
      state.me = await api("GET", "/api/v1/me");
    } catch (err) {
      if (err.status === 401) {
        showSignin();
        return;
      }
      throw err;
    }
    $("where").textContent = state.me.location;
    $("who").textContent = state.me.staff;
    $("signout").hidden = false;
    state.readers = (await api("GET", "/api/v1/readers")).readers;
    refreshStatus();
    if (!state.statusTimer) state.statusTimer = window.setInterval(refreshStatus, STATUS_POLL_MS);
    await showHome();
  }

  function wire() {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", signOut);
    for (const tile of document.querySelectorAll("#new-tiles .tile")) {
      tile.addEventListener("click", () => showOpen(tile.dataset.type));
    }
    $("lookup-form").addEventListener("submit", lookUp);
    $("open-form").addEventListener("submit", submitOpen);
    $("open-back").addEventListener("click", () => showHome());
    $("scan-form").addEventListener("submit", addScan);
    $("scan-code").addEventListener("input", noteTyping);
    // The quantity applies to the next scan. Enter in it (or a pause) hands the focus back to the scan field,
    // so the scanner's keystrokes never end up in the quantity.
    let qtyTimer = null;
    $("scan-qty").addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        focusScan();
      }
    });
    $("scan-qty").addEventListener("input", () => {
      state.lastScan = null;  // a person typed between two scans: the next one is no trigger bounce
      if (qtyTimer) window.clearTimeout(qtyTimer);
      qtyTimer = window.setTimeout(focusScan, QTY_IDLE_MS);
    });
    for (const radio of document.querySelectorAll("input[name=disposition]")) {
      radio.addEventListener("change", focusScan);
    }
    $("scan-keyed").addEventListener("change", () => {
      state.lastScan = null;
      updateScanPlaceholder();
      focusScan();
    });
    $("undo").addEventListener("click", undoLast);
    $("unstored-send").addEventListener("click", sendUnstored);
    $("not-added-seen").addEventListener("click", seenNotAdded);
    $("close").addEventListener("click", closeSession);
    $("cancel").addEventListener("click", cancelSession);
    $("leave").addEventListener("click", () => showHome());
    $("report-done").addEventListener("click", () => showHome());
    window.addEventListener("popstate", backToHome);
    // Closing the tab or reloading with scans still on their way asks first (the browser's own question).
    window.addEventListener("beforeunload", (event) => {
      if (state.pending > 0 || state.unsent.length > 0 || state.unstored.length > 0) event.preventDefault();
    });
    // A keyboard-wedge scanner types wherever the focus is: on the session screen, keep it in the scan field.
    document.addEventListener("keydown", (event) => {
      const onSession = !$("screen-session").hidden;
      const target = event.target;
      const typing = target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement;
      if (onSession && !typing && !$("confirm").open && event.key.length === 1 && !event.ctrlKey && !event.metaKey) {
        $("scan-code").focus();
      }
    });
    start().catch((err) => {
      showSignin();
      message($("signin-error"), err.message, "bad");
    });
  }

  document.addEventListener("DOMContentLoaded", wire);
})();
