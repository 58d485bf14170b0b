"""The one test harness: how a test stands up a hub, an agent, a database and a credential.

* ``tests.harness.inprocess`` — the hub app in the test's process over a real store, served on 127.0.0.1
  (``serve_hub``, ``hub_in_process``, ``hub_in_thread``, ``client_factory``);
* ``tests.harness.hub_process`` — ``python -m hub serve`` as a real process (``HubProcess``);
* ``tests.harness.agent_process`` — ``python -m agent run`` as a real process (``AgentProcess``) and its
  config file (``write_agent_config``);
* ``tests.harness.pg`` — the PostgreSQL test server and a fresh schema per test (``fresh_schema``);
* ``tests.harness.credentials`` — a credential added to a hub database as ``hub agent add`` adds it
  (``add_credential``);
* ``tests.harness.commands`` — one-shot ``python -m hub|agent …`` (``run_hub``, ``run_agent``, ``hub_env``);
* ``tests.harness.net`` — ``free_port``, ``get_json``, ``wait_until``.

Fixtures built on these are in tests/conftest.py (``pg_server``, ``pg_url``, ``store``, ``make_client``,
``client``) and in each folder's conftest.py.
"""
