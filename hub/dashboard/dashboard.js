// shelfsync operations dashboard: one plain script, no build, no dependencies.
// Reads the hub's JSON API with the session cookie and follows the change feed
// (server-sent events) so counts update live. Every value from the hub is put
// into the page as text (never as HTML).
"use strict";

(() => {
  const NUM = new Intl.NumberFormat("en-US");
  const MINUS = "\u2212";
  const ONE_DECIMAL = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const STOCK_ROWS_SHOWN = 500;
  const STATUS_REFRESH_MS = 15000;
  const AGE_TICK_MS = 5000;

  const EXCEPTION_KINDS = {
    negative_on_hand: ["Negative stock", "bad"],
    unknown_barcode: ["Unknown barcode", "warn"],
    divergence: ["Divergence", "warn"],
    transfer_short: ["Transfer short", "bad"],
    transfer_over: ["Transfer over", "warn"],
    transfer_unmatched: ["Transfer unmatched", "warn"],
    rejected_event: ["Rejected event", "bad"],
    import_quarantine: ["Import quarantined", "warn"],
    clock_quarantine: ["Clock quarantine", "warn"],
    transfer_overdue: ["Transfer overdue", "warn"],
  };
  const QUARANTINE_STATUSES = ["pending", "applied", "discarded", "all"];
  const QUARANTINE_LIMIT = 1000; // GET /v1/quarantine's maximum page
  const QUARANTINE_TONES = { pending: "warn", applied: "good", discarded: "plain" };
  const EFFECT_TONES = { applied: "good", superseded: "warn", rejected: "bad", duplicate: "plain" };
  const ON_HAND_KINDS = new Set(["sale", "return", "receive", "adjust", "transfer_out", "transfer_in", "count"]);
  const CONNECTOR_EPOCH = 0; // POST /v1/events: seq is the movement's Unix ms, so the mark is a time

  const state = {
    status: null,
    exceptions: [],
    stock: { location: "", filter: "", rows: [], sort: ["location", 1], noteEl: null },
    sku: null, // {sku, counts: Map(location -> count), ledgerTimer}
    lastChangeMs: null,
    cursor: null,
    started: false,
  };

  // --- small helpers ------------------------------------------------------

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const $ = (id) => document.getElementById(id);

  function fmt(n) {
    return n < 0 ? MINUS + NUM.format(-n) : NUM.format(n);
  }

  function signed(n) {
    return n > 0 ? "+" + NUM.format(n) : fmt(n);
  }

  function numCell(n, opts = {}) {
    if (n === null || n === undefined) return h("td", { class: "num zero" }, "–");
    const classes = ["num"];
    if (opts.negative !== false && n < 0) classes.push("neg");
    if (n === 0 && opts.dimZero) classes.push("zero");
    return h("td", { class: classes.join(" "), dataset: opts.field ? { field: opts.field } : undefined },
      opts.signed ? signed(n) : fmt(n));
  }

  function ageText(ms) {
    if (ms === null || ms === undefined) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 5) return "just now";
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 172800) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} days ago`;
  }

  function ageEl(ms, tag = "span") {
    return h(tag, { class: "age", dataset: ms == null ? {} : { ms: String(ms) }, title: isoTitle(ms) }, ageText(ms));
  }

  function isoTitle(ms) {
    return ms == null ? null : new Date(ms).toLocaleString();
  }

  function timeText(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    const sameDay = d.toDateString() === new Date().toDateString();
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return sameDay ? time : `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  function skew(ms) {
    if (ms === null || ms === undefined) return h("td", { class: "num zero" }, "–");
    const abs = Math.abs(ms);
    const text = abs < 1000 ? `${NUM.format(abs)} ms` : `${(abs / 1000).toFixed(1)} s`;
    return h("td", { class: "num" + (abs > 2000 ? " neg" : ""), title: "hub clock minus the agent's newest event clock" },
      (ms < 0 ? MINUS : ms > 0 ? "+" : "") + text);
  }

  function backlogCell(a) {
    if (a.backlog === null || a.backlog === undefined) {
      return h("td", { class: "num zero", dataset: { field: "backlog" },
        title: "this agent does not report its backlog: the last sync and the high-water mark are the proxy" }, "–");
    }
    const oldest = a.backlog > 0 && a.oldest_pending_ms != null
      ? h("span", { class: "sub" }, "oldest ", ageEl(a.oldest_pending_ms)) : null;
    return h("td", { class: "num" + (a.backlog === 0 ? " zero" : ""), dataset: { field: "backlog" },
      title: "events waiting at the store, not yet acknowledged by the hub, as the agent reported them" },
      fmt(a.backlog), oldest, h("span", { class: "sub" }, "as of ", ageEl(a.backlog_at_ms)));
  }

  function pill(text, tone) {
    return h("span", { class: `pill ${tone || ""}` }, text);
  }

  function skuLink(sku) {
    return h("a", { href: "#/sku/" + encodeURIComponent(sku), class: "mono" }, sku);
  }

  function table(headers, rows, emptyText) {
    const head = h("thead", {}, h("tr", {}, headers.map((x) => {
      const [label, cls] = Array.isArray(x) ? x : [x, ""];
      return h("th", { class: cls || null }, label);
    })));
    const body = h("tbody", {}, rows);
    const t = h("table", {}, head, body);
    const wrap = h("div", { class: "table-wrap" }, t);
    if (!rows.length) wrap.append(h("div", { class: "empty" }, emptyText || "Nothing here."));
    return wrap;
  }

  function banner(text) {
    const el = $("banner");
    if (!text) { el.hidden = true; return; }
    el.textContent = text;
    el.hidden = false;
  }

  async function api(path) {
    let response;
    try {
      response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    } catch (err) {
      banner("The hub cannot be reached. Retrying…");
      throw err;
    }
    if (response.status === 401) {
      window.location.assign("/dashboard/sign-in");
      throw new Error("signed out");
    }
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
      banner(message);
      throw new Error(message);
    }
    banner(null);
    return response.json();
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  // --- status strip ---------------------------------------------------------

  function setStat(id, value, note, tone) {
    const el = $(id);
    el.querySelector(".stat-value").textContent = value;
    el.querySelector(".stat-note").textContent = note || "";
    if (tone) el.dataset.tone = tone; else delete el.dataset.tone;
  }

  function storeAgents() {
    return (state.status ? state.status.agents : []).filter((a) => a.role === "agent" && !a.revoked);
  }

  function renderStrip() {
    const st = state.status;
    if (st) {
      setStat("stat-hub", st.db.ok ? "OK" : "Error", st.db.ok ? `clock ${timeText(st.hub_time)}` : st.db.error,
        st.db.ok ? "good" : "bad");
      const agents = storeAgents();
      const online = agents.filter((a) => a.online).length;
      const offline = agents.length - online;
      setStat("stat-stores", `${online} / ${agents.length}`, offline ? `${offline} offline` : "all online",
        offline ? "warn" : agents.length ? "good" : null);
      const events = agents.reduce((sum, a) => sum + a.events_last_hour, 0);
      setStat("stat-events", fmt(events), "received by this hub");
      const hooks = st.webhooks || [];
      const failing = hooks.filter((w) => w.failures > 0).length;
      setStat("stat-channels", hooks.length ? (failing ? `${failing} failing` : "OK") : "–",
        hooks.length ? `${hooks.length} configured` : "none configured", failing ? "bad" : hooks.length ? "good" : null);
    }
    const negative = state.exceptions.filter((e) => e.kind === "negative_on_hand").length;
    setStat("stat-negative", fmt(negative), negative ? "below zero" : "none below zero",
      negative ? "bad" : "good");
    const total = state.exceptions.length;
    setStat("stat-exceptions", fmt(total), total ? `${new Set(state.exceptions.map((e) => e.kind)).size} kinds` : "nothing to look at",
      total ? "warn" : "good");
    const badge = $("exceptions-badge");
    badge.hidden = total === 0;
    badge.textContent = total > 999 ? "999+" : String(total);
    const held = state.exceptions.filter((e) => e.kind === "clock_quarantine").length; // one per pending held event
    const heldBadge = $("quarantine-badge");
    heldBadge.hidden = held === 0;
    heldBadge.textContent = held > 999 ? "999+" : String(held);
    setStat("stat-change", state.lastChangeMs ? ageText(state.lastChangeMs) : "–",
      state.cursor !== null ? `feed cursor ${state.cursor}` : "");
    const change = $("stat-change").querySelector(".stat-value");
    if (state.lastChangeMs) change.dataset.ms = String(state.lastChangeMs);
  }

  async function refreshStatus() {
    const [status, exceptions] = await Promise.all([api("/v1/status"), api("/v1/exceptions?limit=10000")]);
    state.status = status;
    state.exceptions = exceptions.exceptions;
    if (state.cursor === null) state.cursor = status.feed.cursor;
    if (status.feed.last_change_ms && !(state.lastChangeMs > status.feed.last_change_ms)) state.lastChangeMs = status.feed.last_change_ms;
    $("who").textContent = status.you ? `signed in as ${status.you}` : "";
    renderStrip();
  }

  const refreshSoon = debounce(async () => {
    await refreshStatus();
    const view = currentView();
    if (view.name === "overview" || view.name === "exceptions" || view.name === "quarantine") render();
  }, 1500);

  // --- router ----------------------------------------------------------------

  function currentView() {
    const parts = window.location.hash.replace(/^#\/?/, "").split("/");
    const name = parts[0] || "overview";
    if (name === "sku" && parts.length > 1) return { name, arg: decodeURIComponent(parts.slice(1).join("/")) };
    if (name === "exceptions") return { name, arg: parts[1] ? decodeURIComponent(parts[1]) : "" };
    if (name === "quarantine") return { name, arg: QUARANTINE_STATUSES.includes(parts[1]) ? parts[1] : "pending" };
    return { name: ["overview", "stock"].includes(name) ? name : "overview", arg: "" };
  }

  async function render() {
    const view = currentView();
    for (const a of document.querySelectorAll(".tabs a")) {
      if (a.dataset.view === view.name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (view.name !== "sku") state.sku = null;
    const target = $("view");
    try {
      const content = await VIEWS[view.name](view.arg);
      if (currentView().name === view.name) target.replaceChildren(...[content].flat());
    } catch (err) {
      if (err.message !== "signed out") target.replaceChildren(h("div", { class: "empty" }, `Cannot show this page: ${err.message}`));
    }
  }

  // --- views -------------------------------------------------------------------

  async function overview() {
    if (!state.status) await refreshStatus();
    const st = state.status;
    const agents = storeAgents().sort((a, b) => a.locations.join().localeCompare(b.locations.join()) || a.agent_id.localeCompare(b.agent_id));
    const others = st.agents.length - agents.length;
    const rows = agents.map((a) => {
      const latest = a.epochs.length ? a.epochs[a.epochs.length - 1] : null;
      const status = a.last_sync_ms == null ? pill("Never synced", "plain")
        : a.online ? pill("Online", "good") : pill("Offline", "bad");
      return h("tr", { dataset: { agent: a.agent_id } },
        h("td", { class: "nowrap" }, status),
        h("td", { class: "key" }, a.locations.join(", ") || "–"),
        h("td", { class: "mono" }, a.agent_id),
        h("td", { class: "nowrap" }, ageEl(a.last_sync_ms), h("span", { class: "sub" }, a.last_sync ? timeText(a.last_sync) : "")),
        numCell(a.events_last_hour, { dimZero: true }),
        latest && latest.epoch === CONNECTOR_EPOCH
          ? h("td", { class: "num", title: "an API connector: its mark is the time of its newest movement" },
            timeText(new Date(latest.hwm).toISOString()), h("span", { class: "sub" }, "API connector"))
          : h("td", { class: "num" }, latest ? fmt(latest.hwm) : "–",
            latest ? h("span", { class: "sub" }, `epoch ${latest.epoch_text || latest.epoch}`) : null,
            a.epochs.length > 1
              ? h("span", { class: "sub warn", title: "each new epoch began when the agent found the hub held another history of its outbox" },
                `${a.epochs.length} epochs: outbox restored, copied or rolled back`)
              : null),
        backlogCell(a),
        skew(a.clock_skew_ms));
    });
    const head = h("div", { class: "view-head" },
      h("div", {}, h("h1", {}, "Stores"),
        h("p", { class: "muted" }, `An agent is online when it synced in the last ${Math.round(st.online_within_s / 60)} minutes. ` +
          "An idle agent calls the hub every minute with nothing to send. The backlog is what the agent reported waiting in its outbox at its last sync.")));
    const parts = [head, table(
      ["Status", "Locations", "Agent", "Last sync", ["Events, last hour", "num"], ["High-water mark", "num"], ["Backlog", "num"], ["Clock skew", "num"]],
      rows, "No store agents yet. Create one with shelfsync-hub agent add --location CODE.")];
    if (others) parts.push(h("p", { class: "muted" }, `${others} reader, admin or revoked credential(s) are not listed.`));
    const hooks = st.webhooks || [];
    const hookRows = hooks.map((w) => h("tr", {},
      h("td", { class: "nowrap" }, w.failures ? pill(`Failing ×${w.failures}`, "bad") : pill("Delivering", "good")),
      h("td", { class: "key" }, w.name),
      h("td", { class: "mono" }, w.url),
      h("td", {}, w.location || "all"),
      numCell(Number(w.cursor)),
      numCell(w.lag, { dimZero: true }),
      h("td", { class: "nowrap" }, ageEl(w.last_success_ms)),
      h("td", { class: "wrap" }, w.last_error || "")));
    parts.push(h("div", { class: "section" },
      h("div", { class: "section-head" }, h("h2", {}, "Channel webhooks"),
        h("span", { class: "muted" }, "corrections pushed to the web shop and marketplaces")),
      table(["Status", "Name", "URL", "Location", ["Delivered up to", "num"], ["Behind", "num"], "Last success", "Last error"],
        hookRows, "No webhooks configured ([[webhooks]] in the hub config).")));
    return parts;
  }

  function stockKey(c) {
    return `${c.location}|${c.sku}`; // a location code never holds "|"
  }

  function stockRow(c) {
    return h("tr", { dataset: { key: stockKey(c) } },
      h("td", { class: "key" }, c.location),
      h("td", {}, skuLink(c.sku)),
      numCell(c.on_hand, { field: "on_hand" }),
      numCell(c.reserved, { field: "reserved", dimZero: true }),
      numCell(c.available, { field: "available" }),
      numCell(c.in_transit, { field: "in_transit", dimZero: true }),
      numCell(c.safety_stock, { field: "safety_stock", dimZero: true }),
      h("td", { class: "nowrap" }, ageEl(c.updated_at_ms)));
  }

  function stockMatches(c) {
    const st = state.stock;
    if (st.location && c.location !== st.location) return false;
    const q = st.filter.trim().toLowerCase();
    return !q || c.sku.toLowerCase().includes(q) || c.location.toLowerCase().includes(q);
  }

  function sortedStock() {
    const [field, dir] = state.stock.sort;
    const rows = state.stock.rows.filter(stockMatches);
    rows.sort((a, b) => {
      const x = a[field], y = b[field];
      const primary = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
      return dir * primary || a.location.localeCompare(b.location) || a.sku.localeCompare(b.sku);
    });
    return rows;
  }

  function stockTable() {
    const rows = sortedStock();
    const shown = rows.slice(0, STOCK_ROWS_SHOWN);
    const columns = [["Location", "location"], ["SKU", "sku"], ["On hand", "on_hand", "num"], ["Reserved", "reserved", "num"],
      ["Available", "available", "num"], ["In transit", "in_transit", "num"], ["Safety stock", "safety_stock", "num"], ["Updated", "updated_at_ms"]];
    const [sortField, dir] = state.stock.sort;
    const head = h("thead", {}, h("tr", {}, columns.map(([label, field, cls]) =>
      h("th", { class: cls || null, "aria-sort": sortField === field ? (dir > 0 ? "ascending" : "descending") : null },
        h("a", { href: "#/stock", onclick: (e) => { e.preventDefault(); sortStock(field); } },
          label + (sortField === field ? (dir > 0 ? " ▲" : " ▼") : ""))))));
    const body = h("tbody", { id: "stock-body" }, shown.map(stockRow));
    const wrap = h("div", { class: "table-wrap" }, h("table", { id: "stock-table" }, head, body));
    if (!rows.length) wrap.append(h("div", { class: "empty" }, state.stock.rows.length ? "No count matches the filter." : "No counts yet."));
    const note = state.stock.noteEl;
    if (note) note.textContent = rows.length > shown.length
      ? `showing ${NUM.format(shown.length)} of ${NUM.format(rows.length)}; narrow the filter`
      : `${NUM.format(rows.length)} row${rows.length === 1 ? "" : "s"}`;
    return wrap;
  }

  function redrawStock() {
    const old = document.querySelector("#view .stock-table-slot");
    if (old) old.replaceChildren(stockTable());
  }

  function sortStock(field) {
    const [current, dir] = state.stock.sort;
    state.stock.sort = [field, current === field ? -dir : (["location", "sku"].includes(field) ? 1 : -1)];
    redrawStock();
  }

  function knownLocations() {
    const set = new Set();
    for (const a of state.status ? state.status.agents : []) for (const l of a.locations) set.add(l);
    for (const c of state.stock.rows) set.add(c.location);
    return [...set].sort();
  }

  async function stock() {
    if (!state.status) await refreshStatus();
    const st = state.stock;
    const query = st.location ? `?location=${encodeURIComponent(st.location)}&limit=10000` : "?limit=10000";
    st.rows = [];
    // Every page: follow `next` until it is null (bounded, so a misbehaving hub cannot loop the page forever).
    for (let page = await api("/v1/counts" + query), n = 0; ; n++) {
      st.rows.push(...page.counts);
      if (!page.next || n >= 100) break;
      page = await api("/v1/counts" + query + "&cursor=" + encodeURIComponent(page.next));
    }
    const select = h("select", {
      id: "stock-location", "aria-label": "Location",
      onchange: (e) => { st.location = e.target.value; render(); },
    }, h("option", { value: "" }, "All locations"), knownLocations().map((l) => h("option", { value: l, selected: l === st.location }, l)));
    const filter = h("input", {
      id: "stock-filter", type: "search", placeholder: "Filter by SKU or location…", value: st.filter, autocomplete: "off",
      oninput: debounce((e) => { st.filter = e.target.value; redrawStock(); }, 120),
    });
    st.noteEl = h("span", { class: "count-note", id: "stock-note" });
    const head = h("div", { class: "view-head" },
      h("div", {}, h("h1", {}, "Stock"), h("p", { class: "muted" }, "Counts by location and SKU, live from the change feed. Click a SKU for its ledger.")),
      h("div", { class: "toolbar" }, select, filter, st.noteEl));
    return [head, h("div", { class: "stock-table-slot" }, stockTable())];
  }

  function renderSkuTotals() {
    const s = state.sku;
    if (!s) return;
    const all = [...s.counts.values()];
    const sum = (f) => all.reduce((t, c) => t + c[f], 0);
    const box = s.totalsEl;
    const items = [["On hand", sum("on_hand")], ["Reserved", sum("reserved")], ["Available", sum("available")], ["In transit", sum("in_transit")]];
    box.replaceChildren(...items.map(([label, n]) => h("div", { class: "card total" },
      h("div", { class: "stat-label" }, label),
      h("div", { class: "stat-value" + (n < 0 ? " neg" : "") }, fmt(n)),
      h("div", { class: "stat-note" }, `across ${all.length} location${all.length === 1 ? "" : "s"}`))));
  }

  // Walk the ledger newest → oldest from today's on_hand: the on_hand right after each event, per location.
  // A count's "before" is its expected quantity (counted − variance); rejected attempts changed nothing.
  function annotateBalances(events, counts) {
    const running = new Map([...counts.values()].map((c) => [c.location, c.on_hand]));
    for (const e of events) {
      e.after = null;
      if (e.effect === "rejected" || e.effect === "duplicate" || !ON_HAND_KINDS.has(e.kind)) continue;
      const now = running.get(e.location);
      if (now === undefined || now === null) continue;
      e.after = now;
      running.set(e.location, e.kind === "count" ? (e.variance === null ? null : e.qty - e.variance) : now - e.qty);
    }
  }

  function ledgerRow(e) {
    const qty = e.kind === "count" ? h("td", { class: "num", title: "counted on the shelf" }, "= " + fmt(e.qty)) : numCell(e.qty, { signed: true, negative: false });
    const effect = pill(e.effect, EFFECT_TONES[e.effect] || "plain");
    const detail = e.rejection ? h("span", { class: "sub" }, e.rejection) : null;
    return h("tr", {},
      h("td", { class: "nowrap", title: e.occurred_at_time }, timeText(e.occurred_at_time)),
      h("td", { class: "key" }, e.location),
      h("td", {}, h("span", { class: "pill plain accent" }, e.kind)),
      qty,
      h("td", {}, effect, detail),
      e.after === null ? h("td", { class: "num zero" }, "–") : numCell(e.after),
      e.variance === null ? h("td", { class: "num zero" }, "–") : numCell(e.variance, { signed: true }),
      h("td", { class: "wrap" }, e.ref || "", e.reason ? h("span", { class: "sub" }, e.reason) : null),
      h("td", { class: "mono" }, e.source, h("span", { class: "sub" },
        e.epoch === CONNECTOR_EPOCH && e.attrs && e.attrs.api_id ? `id ${e.attrs.api_id}` : `${e.agent_id} · seq ${e.seq}`)));
  }

  async function ledgerTable(sku, counts) {
    const ledger = await api(`/v1/ledger?sku=${encodeURIComponent(sku)}&limit=200`);
    annotateBalances(ledger.events, counts);
    return table(["Occurred", "Location", "Kind", ["Qty", "num"], "Effect", ["On hand after", "num"], ["Variance", "num"],
      "Ref / reason", "Source"], ledger.events.map(ledgerRow), "No events for this SKU.");
  }

  async function skuView(sku) {
    const counts = await api(`/v1/skus/${encodeURIComponent(sku)}/counts`);
    state.sku = { sku, counts: new Map(counts.counts.map((c) => [c.location, c])), totalsEl: h("div", { class: "totals" }) };
    const ledger = await ledgerTable(sku, state.sku.counts);
    const rows = counts.counts.map(stockRow);
    const head = h("div", { class: "view-head" },
      h("div", {}, h("div", { class: "stat-label" }, "SKU"), h("h1", { class: "sku-title" }, sku)),
      h("a", { href: "#/stock" }, "← All stock"));
    renderSkuTotals();
    return [head, state.sku.totalsEl,
      h("div", { class: "section" }, h("div", { class: "section-head" }, h("h2", {}, "Counts by location")),
        h("div", { id: "sku-counts" }, table(["Location", "SKU", ["On hand", "num"], ["Reserved", "num"], ["Available", "num"],
          ["In transit", "num"], ["Safety stock", "num"], "Updated"], rows, "The hub has no count of this SKU anywhere."))),
      h("div", { class: "section" }, h("div", { class: "section-head" }, h("h2", {}, "Ledger"),
        h("span", { class: "muted" }, "newest first, in resolution order; each event's effect on the count")),
        h("div", { id: "sku-ledger" }, ledger))];
  }

  const reloadLedger = debounce(async () => {
    if (!state.sku) return;
    const slot = $("sku-ledger");
    if (slot) slot.replaceChildren(await ledgerTable(state.sku.sku, state.sku.counts));
  }, 400);

  async function exceptionsView(kind) {
    await refreshStatus();
    const all = state.exceptions;
    const byKind = new Map();
    for (const e of all) byKind.set(e.kind, (byKind.get(e.kind) || 0) + 1);
    const chips = h("div", { class: "chips", role: "group", "aria-label": "Kinds" },
      h("a", { class: "chip", href: "#/exceptions", "aria-pressed": String(!kind) }, "All", h("span", { class: "n" }, NUM.format(all.length))),
      [...byKind.entries()].sort().map(([k, n]) => h("a", { class: "chip", href: "#/exceptions/" + encodeURIComponent(k), "aria-pressed": String(kind === k) },
        (EXCEPTION_KINDS[k] || [k])[0], h("span", { class: "n" }, NUM.format(n)))));
    const shown = all.filter((e) => !kind || e.kind === kind);
    const rows = shown.map((e) => {
      const [label, tone] = EXCEPTION_KINDS[e.kind] || [e.kind, "plain"];
      return h("tr", {},
        h("td", { class: "nowrap" }, pill(label, tone)),
        h("td", { class: "key" }, e.location || "–"),
        h("td", {}, e.sku ? skuLink(e.sku) : "–"),
        h("td", { class: "wrap" }, e.detail),
        h("td", { class: "nowrap" }, e.at_ms ? ageEl(e.at_ms) : "–"));
    });
    return [h("div", { class: "view-head" }, h("div", {}, h("h1", {}, "Exceptions"),
      h("p", { class: "muted" }, "Negative stock, unknown barcodes, divergence from other systems, transfer differences and refused events."))),
    chips, table(["Kind", "Location", "SKU", "What happened", "When"], rows, "Nothing needs attention.")];
  }

  // --- quarantine: events held for a clock outside the hub's window -----------------

  function spanText(ms) {
    const hours = Math.abs(ms) / 3600000;
    return hours < 48 ? `${ONE_DECIMAL.format(hours)} hours` : `${ONE_DECIMAL.format(hours / 24)} days`;
  }

  function offText(q) {
    return `${spanText(q.skew_ms)} ${q.skew_ms > 0 ? "ahead" : "behind"}`;
  }

  function stampParts(iso) { // [date, "time UTC"]: the stamp as it was, never in the browser's time zone
    if (!iso) return ["–", ""];
    const [date, time] = iso.split("T");
    return [date, time.replace(/\.\d+Z$/, " UTC")];
  }

  // The exact call an admin runs: the dashboard itself only reads (its session cookie never writes).
  function resolveCommand(q, action) {
    const body = JSON.stringify({ action });
    return `curl -sS -X POST -H "Authorization: Bearer $SHELFSYNC_ADMIN_TOKEN" -H "Content-Type: application/json" ` +
      `-d '${body}' ${window.location.origin}/v1/quarantine/${q.id}`;
  }

  function resolveCell(q) {
    if (q.status !== "pending") {
      return h("td", { class: "wrap" }, `${q.status} by `, h("span", { class: "mono" }, q.resolved_by || "–"),
        h("span", { class: "sub" }, q.resolved_at_ms ? isoTitle(q.resolved_at_ms) : ""));
    }
    const command = (action, what) => h("div", { class: "command" }, h("div", { class: "sub" }, what),
      h("code", { class: "command-text", dataset: { action } }, resolveCommand(q, action)));
    return h("td", { class: "wrap resolve" }, h("details", {},
      h("summary", {}, "How to resolve"),
      command("apply_at_receipt", "Apply it as if it happened when the hub received it:"),
      command("discard", "Or discard it (kept in the ledger as a rejected attempt):")));
  }

  function quarantineRow(q) {
    const qty = q.kind === "count" ? h("td", { class: "num", title: "counted on the shelf" }, "= " + fmt(q.qty))
      : numCell(q.qty, { signed: true, negative: false });
    return h("tr", { dataset: { quarantine: String(q.id) } },
      h("td", { class: "nowrap" }, pill(q.status, QUARANTINE_TONES[q.status] || "plain")),
      h("td", { class: "mono nowrap" }, q.agent_id, h("span", { class: "sub" }, `seq ${NUM.format(q.seq)}`)),
      h("td", { class: "key" }, q.location),
      h("td", { class: "nowrap" }, skuLink(q.sku)),
      h("td", {}, h("span", { class: "pill plain accent" }, q.kind)),
      qty,
      h("td", { class: "nowrap mono", dataset: { field: "stamp" }, title: "the time the store's machine gave it" },
        stampParts(q.occurred)[0], h("span", { class: "sub" }, stampParts(q.occurred)[1])),
      h("td", { class: "nowrap", dataset: { field: "received" } }, stampParts(q.received)[0],
        h("span", { class: "sub" }, stampParts(q.received)[1] + (q.attempts > 1 ? `, sent ${NUM.format(q.attempts)} times` : ""))),
      h("td", { class: "num neg", dataset: { field: "off" }, title: q.detail }, offText(q)),
      resolveCell(q));
  }

  async function quarantineView(status) {
    await refreshStatus();
    const body = await api(`/v1/quarantine?status=${status}&limit=${QUARANTINE_LIMIT}`);
    const rows = body.quarantine;
    const chips = h("div", { class: "chips", role: "group", "aria-label": "Status" },
      QUARANTINE_STATUSES.map((s) => h("a", { class: "chip", href: "#/quarantine/" + s, "aria-pressed": String(status === s) },
        s[0].toUpperCase() + s.slice(1))));
    const note = body.next ? h("p", { class: "muted" }, `Showing the newest ${NUM.format(QUARANTINE_LIMIT)}; filter by status to see the rest.`) : null;
    return [h("div", { class: "view-head" }, h("div", {}, h("h1", {}, "Quarantine"),
      h("p", { class: "muted" }, "Movements the hub held back because the store machine's clock was outside the hub's clock window: " +
        "they are not in any count until an admin applies them at the time the hub received them, or discards them."),
      h("p", { class: "muted" }, "The dashboard only reads. An admin resolves each one with an admin credential ",
        h("code", {}, "shelfsync-hub agent add --role admin"), ", exported as ", h("code", {}, "SHELFSYNC_ADMIN_TOKEN"),
        ", by running the command shown under How to resolve."))),
    chips, ...(note ? [note] : []),
    table(["Status", "Agent", "Location", "SKU", "Kind", ["Qty", "num"], "Stamp it carried", "Received by the hub",
      ["How far off", "num"], "Resolve"], rows.map(quarantineRow),
      status === "pending" ? "Nothing is held: every store's clock was within the window." : "Nothing here.")];
  }

  const VIEWS = { overview, stock, sku: skuView, exceptions: exceptionsView, quarantine: quarantineView };

  // --- live updates ------------------------------------------------------------

  function flashRow(row) {
    row.classList.remove("flash");
    void row.offsetWidth; // restart the animation
    row.classList.add("flash");
  }

  function updateRow(row, c) {
    const fresh = stockRow(c);
    row.replaceWith(fresh);
    flashRow(fresh);
  }

  function applyChange(change) {
    state.lastChangeMs = Date.now();
    state.cursor = String(change.change_id);
    const key = stockKey(change);
    // Stock view
    const existing = state.stock.rows.find((c) => stockKey(c) === key);
    const merged = Object.assign({ safety_stock: 0 }, existing || {}, change, { updated_at_ms: change.at_ms });
    if (existing) Object.assign(existing, merged);
    else if (!state.stock.location || state.stock.location === change.location) state.stock.rows.push(merged);
    const view = currentView();
    if (view.name === "stock") {
      const row = document.querySelector(`#stock-body tr[data-key="${CSS.escape(key)}"]`);
      if (row) updateRow(row, merged);
      else if (stockMatches(merged)) redrawStock();
    }
    // SKU view
    if (state.sku && state.sku.sku === change.sku) {
      const before = state.sku.counts.get(change.location);
      const c = Object.assign({ safety_stock: 0 }, before || {}, change, { updated_at_ms: change.at_ms });
      state.sku.counts.set(change.location, c);
      const row = document.querySelector(`#sku-counts tr[data-key="${CSS.escape(key)}"]`);
      if (row) updateRow(row, c);
      else render();
      renderSkuTotals();
      reloadLedger();
    }
    renderStrip();
    refreshSoon();
  }

  function setLive(stateName, text) {
    const el = $("live");
    el.dataset.state = stateName;
    $("live-text").textContent = text;
  }

  function connectFeed() {
    const source = new EventSource("/v1/changes/stream");
    source.addEventListener("ready", (e) => {
      setLive("live", "Live");
      if (state.cursor === null) state.cursor = JSON.parse(e.data).cursor;
      if (!state.started) {
        state.started = true;
        refreshStatus().then(render, () => render());
      }
    });
    source.addEventListener("change", (e) => applyChange(JSON.parse(e.data)));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setLive("down", "Offline");
        api("/v1/status").then(() => setTimeout(connectFeed, 3000), () => setTimeout(connectFeed, 5000));
      } else {
        setLive("down", "Reconnecting…");
      }
    });
  }

  function tickAges() {
    for (const el of document.querySelectorAll(".age[data-ms]")) el.textContent = ageText(Number(el.dataset.ms));
    const change = $("stat-change").querySelector(".stat-value");
    if (change.dataset.ms) change.textContent = ageText(Number(change.dataset.ms));
  }

  // --- start ---------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("find-sku").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("find-sku-input").value.trim();
      if (value) window.location.hash = "#/sku/" + encodeURIComponent(value);
    });
    window.addEventListener("hashchange", render);
    connectFeed();
    setInterval(tickAges, AGE_TICK_MS);
    setInterval(() => refreshStatus().catch(() => {}), STATUS_REFRESH_MS);
  });
})();
