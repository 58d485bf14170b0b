// shelfsync operations dashboard: one plain script, no build, no dependencies.
// Reads the hub's JSON API with the session cookie and follows the change feed
// (server-sent events) so counts update live. Every value from the hub is put
// into the page as text (never as HTML). The session cookie only reads; the one
// writes it offers (mapping an unknown barcode, dismissing a refused channel
// order, importing a catalog CSV) are sent with an admin credential the person pastes, held in this
// tab's memory only.
//
// Pages: PAGES (near the end) lists the navigation's tabs in order. To add a page,
// write its render function (returning the page's elements) and add one entry.
"use strict";

(() => {
  const NUM = new Intl.NumberFormat("en-US");
  const MINUS = "\u2212";
  const ONE_DECIMAL = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const STOCK_ROWS_SHOWN = 500;
  // The counts the Stock page reads: one page of GET /v1/counts at its maximum. A hub of 200 stores × 5,000
  // SKUs holds a million counts; reading them all froze the tab and re-read the whole table at each visit.
  // Past this, the page says so and offers a location or the SKU search, which read only what they show.
  const STOCK_ROWS_LOADED = 10000;
  const LEDGER_PAGE = 50; // ledger events per page of a SKU's ledger
  const CATALOG_REFRESH_MS = 60000;
  const TIME_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  const ZONE_NAME = new Intl.DateTimeFormat("en-US", { timeZoneName: "short" });
  const LOCAL_FULL = new Intl.DateTimeFormat("en-US", { dateStyle: "medium", timeStyle: "long" });
  const STATUS_REFRESH_MS = 15000;
  // The exceptions read with the status: one page of GET /v1/exceptions at its maximum, newest first. When the
  // hub lists more, every count drawn from them is a lower bound and is shown with a "+", never as the total.
  const EXCEPTIONS_READ = 10000;
  // The rows the Exceptions page draws, newest first: drawing 10,000 held the tab for 24 s at every live redraw.
  const EXCEPTIONS_SHOWN = 500;
  // The store agents the Stores page draws at first, and how many more each "Show more" adds: a chain of 3,000
  // stores is found with the filter (location or agent id), not scrolled through. A live change draws again only
  // the rows whose agent changed (storeRowSig), not the list.
  const STORES_SHOWN = 500;
  const AGE_TICK_MS = 5000;
  // The rows the Shrinkage page reads and draws: the report has one per location and SKU counted, and a stocktake
  // counts every SKU of every store — 50,000 rows held the tab for a minute. One page of the most shrinkage.
  const VARIANCE_ROWS_SHOWN = 500;

  const EXCEPTION_KINDS = {
    negative_on_hand: ["Negative stock", "bad"],
    unknown_barcode: ["Unknown barcode", "warn"],
    divergence: ["Divergence", "warn"],
    transfer_short: ["Transfer short", "bad"],
    transfer_over: ["Transfer over", "warn"],
    transfer_unmatched: ["Transfer unmatched", "warn"],
    transfer_shared_ref: ["Transfer ref shared by several shippers", "bad"],
    transfer_misdirected: ["Transfer misdirected", "bad"],
    transfer_unknown_destination: ["Transfer to an unknown location", "bad"],
    rejected_event: ["Rejected event", "bad"],
    import_quarantine: ["Import quarantined", "warn"],
    clock_quarantine: ["Clock quarantine", "warn"],
    transfer_overdue: ["Transfer overdue", "warn"],
    channel_divergence: ["Channel divergence", "warn"],
    channel_refused: ["Channel refused a level", "bad"],
    channel_mapping: ["Channel mapping", "warn"],
    channel_order_refused: ["Channel sale not booked", "bad"],
    agent_copies: ["Agent running twice", "bad"],
    agent_disk_full: ["Store PC disk full", "bad"],
    agent_movements_lost: ["Store movements lost: count again", "bad"],
    book_out_without_ref: ["Book-out names no transfer", "warn"],
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
    exceptionsMore: false, // the hub lists more exceptions than the EXCEPTIONS_READ read
    stock: { location: "", filter: "", rows: [], more: false, sort: ["location", 1], noteEl: null },
    // The Stores page: its filter, how many rows it draws, and its drawn rows by agent id ({ sig, tr }) while shown.
    stores: { filter: "", shown: STORES_SHOWN, view: null, root: null, drawn: new Map() },
    sku: null, // {sku, counts: Map(location -> count), totalsEl, ledger: {cursors, page, next, starts, fresh}}
    names: new Map(), // SKU -> product name, from the catalog
    skus: [], // every SKU the catalog maps barcodes to
    catalogAt: 0,
    catalogTag: null,
    variance: { location: "", from: "", to: "" },
    lastChangeMs: null,
    cursor: null,
    started: false,
  };

  // --- small helpers ------------------------------------------------------

  // The characters that steer bidirectional text: embeddings and overrides (U+202A–U+202E) and isolates
  // (U+2066–U+2069). What a store sends may hold them (the hub's text rule lets them through, as it lets Hebrew and
  // Arabic through); left to act, one turns the rest of its line around — the hub's sentence about a SKU, a dialog's
  // explanation — and makes two SKUs look alike. Every text put into the page shows each one as a mark instead.
  const BIDI_CONTROLS = /([\u202a-\u202e\u2066-\u2069])/;
  const BIDI_CONTROLS_ALL = /[\u202a-\u202e\u2066-\u2069]/g;

  function codePoint(ch) {
    return "U+" + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
  }

  // ``text`` as nodes for the page: its own characters, each bidi control shown as a mark, not acting.
  function textNodes(text) {
    const parts = String(text).split(BIDI_CONTROLS); // odd indices: the controls
    return parts.map((part, i) => i % 2 === 0 ? document.createTextNode(part)
      : h("span", { class: "bidi-mark", title: `${codePoint(part)}, a character that changes the direction of the ` +
        "text around it: shown here instead of acting" }, codePoint(part)));
  }

  // ``text`` for a command a person copies: each bidi control as its JSON escape (\u202e), the same character to
  // the command's JSON reader, never one that turns the command around on the screen.
  function escapeBidi(text) {
    return text.replace(BIDI_CONTROLS_ALL, (ch) => "\\u" + ch.codePointAt(0).toString(16).padStart(4, "0"));
  }

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.replaceChildren(...textNodes(value));
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      if (child instanceof Node) el.append(child);
      else el.append(...textNodes(child));
    }
    return el;
  }

  // Put ``text`` into ``el`` in place of what it held (as h() puts its children).
  function setText(el, text) {
    el.replaceChildren(...textNodes(text));
  }

  const $ = (id) => document.getElementById(id);

  function fmt(n) {
    return n < 0 ? MINUS + NUM.format(-n) : NUM.format(n);
  }

  // A count of the exceptions read: "10,000+" when the hub lists more than were read.
  function atLeast(n) {
    return fmt(n) + (state.exceptionsMore ? "+" : "");
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

  // Times are shown in the browser's time zone, with its name (CET, GMT+5:30 …); hovering shows UTC.
  function zoneOf(d) {
    const part = ZONE_NAME.formatToParts(d).find((p) => p.type === "timeZoneName");
    return part ? part.value : "";
  }

  function utcText(d) {
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function isoTitle(ms) {
    if (ms === null || ms === undefined) return null;
    const d = new Date(ms);
    return Number.isNaN(d.getTime()) ? null : `${LOCAL_FULL.format(d)} · ${utcText(d)}`;
  }

  function timeText(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return "–";
    const sameDay = d.toDateString() === new Date().toDateString();
    const time = d.toLocaleTimeString("en-US", { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
    const day = sameDay ? "" : d.toLocaleDateString("en-US", { month: "short", day: "numeric",
      year: d.getFullYear() === new Date().getFullYear() ? undefined : "numeric" }) + ", ";
    return `${day}${time} ${zoneOf(d)}`;
  }

  function timeEl(iso, tag = "span", props = {}) {
    const ms = iso ? Date.parse(iso) : NaN;
    return h(tag, Object.assign({ class: "time", title: Number.isNaN(ms) ? null : utcText(new Date(ms)) }, props),
      timeText(iso));
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

  function bytesText(n) {
    const units = [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
    for (const [unit, size] of units) if (n >= size) return `${(n / size).toFixed(1).replace(/\.0$/, "")} ${unit}`;
    return `${NUM.format(n)} bytes`;
  }

  // The disk of the agent's outbox as it last reported it (GET /v1/agents: disk); null: an agent from before the report.
  function diskCell(a) {
    const d = a.disk;
    if (!d) {
      return h("td", { class: "zero", dataset: { field: "disk" }, title: "this agent does not report its disk" }, "–");
    }
    const free = d.free_bytes == null ? null : h("span", { class: "sub" }, `${bytesText(d.free_bytes)} free`);
    if (d.state === "ok") return h("td", { dataset: { field: "disk", state: d.state } }, pill("OK", "good"), free);
    const full = d.state === "full";
    const reserve = d.reserve_bytes
      ? `reserve ${bytesText(d.reserve_held_bytes)} of ${bytesText(d.reserve_bytes)} left` : "no disk reserve";
    return h("td", { dataset: { field: "disk", state: d.state },
      title: full ? "the disk is full and the agent's disk reserve is spent: scans are being refused; free disk space on that PC"
        : "the disk is full: scans are stored in the agent's disk reserve until it is spent; free disk space on that PC" },
      pill("Disk full", full ? "bad" : "warn"),
      h("span", { class: "sub" }, full ? "scans refused since " : "since ", timeEl(d.since)),
      h("span", { class: "sub" }, reserve), free);
  }

  function pill(text, tone) {
    return h("span", { class: `pill ${tone || ""}` }, text);
  }

  function skuLink(sku) {
    return h("a", { href: "#/sku/" + encodeURIComponent(sku), class: "mono" }, sku);
  }

  function nameOf(sku) {
    if (sku && sku.startsWith("unknown:")) return "unknown barcode";
    return state.names.get(sku) || "";
  }

  // A SKU with its product name from the catalog under it.
  function skuWithName(sku) {
    const name = nameOf(sku);
    return [skuLink(sku), name ? h("span", { class: "sub name", dataset: { field: "name" } }, name) : null];
  }

  function csvLink(path, label = "Download CSV", title = "the whole list, as a spreadsheet (CSV, UTF-8)") {
    return h("a", { class: "button-secondary", href: path, download: "", dataset: { csv: "" }, title }, label);
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
    setText(el, text);
    el.hidden = false;
  }

  // Signing out stops the page's own traffic first: a request still under way when the hub ends the session
  // would be answered 401 while the browser goes to the sign-in page, and a feed would try to reconnect.
  const leaving = new AbortController();
  let feed = null; // the change stream's EventSource

  function leave() {
    if (leaving.signal.aborted) return;
    leaving.abort();
    if (feed) feed.close();
  }

  // fetch() with the session's cookie, cancelled when the page signs out; a request of a page that is leaving
  // never settles, so nothing after it runs (the browser is on its way to the sign-in page).
  async function pageFetch(path, options = {}) {
    if (leaving.signal.aborted) return new Promise(() => {});
    try {
      return await fetch(path, Object.assign({ credentials: "same-origin", signal: leaving.signal }, options));
    } catch (err) {
      if (leaving.signal.aborted) return new Promise(() => {});
      throw err;
    }
  }

  async function api(path) {
    let response;
    try {
      response = await pageFetch(path, { headers: { Accept: "application/json" } });
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
      try { message = (await response.json()).detail || message; } catch (_) { /* not JSON */ }
      banner(message);
      throw new Error(message);
    }
    banner(null);
    return response.json();
  }

  // SKU -> name: the description of the SKU's single-unit barcode, else of its smallest pack.
  // Read again at most once a minute, and only when its version (ETag) moved: a 304 costs nothing.
  async function loadCatalog(force = false) {
    if (!force && Date.now() - state.catalogAt < CATALOG_REFRESH_MS) return;
    state.catalogAt = Date.now();
    const response = await pageFetch("/v1/catalog", { cache: "no-store",
      headers: Object.assign({ Accept: "application/json" }, state.catalogTag ? { "If-None-Match": state.catalogTag } : {}) });
    if (response.status === 304 || !response.ok) return; // unchanged, or the status refresh reports the trouble
    const catalog = await response.json();
    state.catalogTag = response.headers.get("ETag");
    const best = new Map();
    for (const item of catalog.items) {
      const held = best.get(item.sku);
      if (!held || (item.description && (!held.description || item.pack_size < held.pack_size))) best.set(item.sku, item);
    }
    state.names = new Map([...best].filter(([, item]) => item.description).map(([sku, item]) => [sku, item.description]));
    state.skus = [...best.keys()].sort();
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
      const aside = hooks.filter((w) => w.aside).length; // left to hubs on a newer config: none may run
      setStat("stat-channels", hooks.length ? (failing ? `${failing} failing` : aside ? `${aside} aside` : "OK") : "–",
        hooks.length ? `${hooks.length} configured` : "none configured",
        failing ? "bad" : aside ? "warn" : hooks.length ? "good" : null);
    }
    const negative = state.exceptions.filter((e) => e.kind === "negative_on_hand").length;
    setStat("stat-negative", negative ? atLeast(negative) : fmt(negative), negative ? "below zero" : "none below zero",
      negative ? "bad" : "good");
    const total = state.exceptions.length;
    const kinds = new Set(state.exceptions.map((e) => e.kind)).size;
    setStat("stat-exceptions", atLeast(total), state.exceptionsMore ? `the newest ${NUM.format(total)} read`
      : total ? `${kinds} kind${kinds === 1 ? "" : "s"}` : "nothing to look at", total ? "warn" : "good");
    for (const page of PAGES) {
      const badge = page.badge ? $(`${page.view}-badge`) : null;
      if (!badge) continue;
      const n = page.badge();
      badge.hidden = !n;
      badge.textContent = n > 999 ? "999+" : String(n);
    }
    setStat("stat-change", state.lastChangeMs ? ageText(state.lastChangeMs) : "–",
      state.cursor !== null ? `feed cursor ${String(state.cursor).split(".")[0]}` : ""); // its change id, not its history
    const change = $("stat-change").querySelector(".stat-value");
    if (state.lastChangeMs) change.dataset.ms = String(state.lastChangeMs);
  }

  // One status read at a time. The strip is read every STATUS_REFRESH_MS, after changes and by pages; when the hub
  // answers slower than that (a long exceptions list), reads started anyway piled up on it, each tab adding more.
  // A call during a read waits for it and for one more read after it (what it asked for may have changed since
  // that read began); any number of calls meanwhile share that one.
  let statusRead = null;
  let statusAgain = false;

  function refreshStatus() {
    if (statusRead) {
      statusAgain = true;
      return statusRead;
    }
    statusRead = (async () => {
      try {
        do {
          statusAgain = false;
          await readStatus();
        } while (statusAgain);
      } finally {
        statusRead = null;
      }
    })();
    return statusRead;
  }

  async function readStatus() {
    const [status, exceptions] = await Promise.all([api("/v1/status"), api(`/v1/exceptions?limit=${EXCEPTIONS_READ}`),
      loadCatalog().catch(() => {}), loadChannels().catch(() => {})]);
    state.status = status;
    state.exceptions = exceptions.exceptions;
    state.exceptionsMore = Boolean(exceptions.next);
    if (state.cursor === null) state.cursor = status.feed.cursor;
    if (status.feed.last_change_ms && !(state.lastChangeMs > status.feed.last_change_ms)) state.lastChangeMs = status.feed.last_change_ms;
    $("who").textContent = status.you ? `signed in as ${status.you}` : "";
    renderStrip();
  }

  const refreshSoon = debounce(async () => {
    await refreshStatus();
    const page = PAGES.find((p) => p.view === currentView().name);
    if (page && page.live) render();
  }, 1500);

  // --- router ----------------------------------------------------------------

  // #/<view>/<rest>: the page named view (PAGES, or the SKU page), with its own reading of the rest.
  function currentView() {
    const parts = window.location.hash.replace(/^#\/?/, "").split("?")[0].split("/"); // ?…: a page's own filters
    const name = parts[0] || "overview";
    const rest = parts.slice(1).map(decodeURIComponent).join("/");
    if (name === "sku" && rest) return { name, arg: rest, render: skuView };
    const page = PAGES.find((p) => p.view === name) || PAGES[0];
    return { name: page.view, arg: page.arg ? page.arg(rest) : "", render: page.render };
  }

  function buildNav() {
    $("tabs").replaceChildren(...PAGES.map((page) => h("a", { href: "#/" + page.view, dataset: { view: page.view } },
      page.label, page.badge ? h("span", { class: "tab-badge", id: `${page.view}-badge`, hidden: true }) : null)));
  }

  // What a page's render returns when it updated the page already drawn in place (the Stores page on a live change).
  const KEPT = Symbol("kept");

  async function render() {
    const view = currentView();
    for (const a of document.querySelectorAll(".tabs a")) {
      if (a.dataset.view === view.name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (view.name !== "sku") state.sku = null;
    const target = $("view");
    try {
      const content = await view.render(view.arg);
      if (content === KEPT) return; // the page updated what it had drawn, in place
      if (currentView().name === view.name) target.replaceChildren(...[content].flat());
    } catch (err) {
      if (err.message !== "signed out") target.replaceChildren(h("div", { class: "empty" }, `Cannot show this page: ${err.message}`));
    }
  }

  // --- views -------------------------------------------------------------------

  // Longest offline first (the oldest last sync), those never synced after them.
  function offlineFirst(a, b) {
    return (a.last_sync_ms ?? Infinity) - (b.last_sync_ms ?? Infinity) || a.agent_id.localeCompare(b.agent_id);
  }

  // The fields of a store agent its row shows: a row is drawn again only when they change (not for the age of its
  // last sync, which the page's clock ticks on).
  function storeRowSig(a) {
    return JSON.stringify(a, (key, value) => (key === "last_sync_age_s" ? undefined : value));
  }

  function storeRow(a) {
    const latest = a.epochs.length ? a.epochs[a.epochs.length - 1] : null;
    const status = a.last_sync_ms == null ? pill("Never synced", "plain")
      : a.online ? pill("Online", "good") : pill("Offline", "bad");
    return h("tr", { dataset: { agent: a.agent_id } },
      h("td", { class: "nowrap" }, status),
      h("td", { class: "key" }, a.locations.join(", ") || "–"),
      h("td", { class: "mono" }, a.agent_id),
      h("td", { class: "nowrap" }, ageEl(a.last_sync_ms), a.last_sync ? timeEl(a.last_sync, "span", { class: "sub time" }) : null),
      numCell(a.events_last_hour, { dimZero: true }),
      latest && latest.epoch === CONNECTOR_EPOCH
        ? h("td", { class: "num", title: "an API connector: its mark is the time of its newest movement" },
          timeEl(new Date(latest.hwm).toISOString()), h("span", { class: "sub" }, "API connector"))
        : h("td", { class: "num" }, latest ? fmt(latest.hwm) : "–",
          latest ? h("span", { class: "sub", dataset: { field: "epoch" } }, `epoch ${latest.epoch_text}`) : null,
          a.epochs.length > 1
            ? h("span", { class: "sub warn", title: "each new epoch began when the agent found the hub held another history of its outbox" },
              `${a.epochs.length} epochs: outbox restored, copied or rolled back`)
            : null),
      backlogCell(a),
      diskCell(a),
      skew(a.clock_skew_ms));
  }

  function storeMatches(a, q) {
    return a.agent_id.toLowerCase().includes(q) || a.locations.some((l) => l.toLowerCase().includes(q));
  }

  // The Stores page's list in its order (of the chip chosen), narrowed by the filter.
  function storesListed(filter) {
    const every = storeAgents();
    const q = state.stores.filter.trim().toLowerCase();
    const agents = filter === "offline" ? every.filter((a) => !a.online).sort(offlineFirst)
      : every.sort((a, b) => a.locations.join().localeCompare(b.locations.join()) || a.agent_id.localeCompare(b.agent_id));
    return q ? agents.filter((a) => storeMatches(a, q)) : agents;
  }

  // Draw the Stores table's rows: the first state.stores.shown of the list, a row made again only when its agent
  // changed since it was drawn, rows moved only where the order changed.
  function drawStores() {
    const ss = state.stores;
    const root = ss.root;
    const listed = storesListed(ss.view);
    const shown = listed.slice(0, ss.shown);
    const body = root.querySelector("#stores-body");
    const drawn = new Map();
    let at = body.firstChild;
    for (const a of shown) {
      const sig = storeRowSig(a);
      const before = ss.drawn.get(a.agent_id);
      let tr = before ? before.tr : null;
      if (!before || before.sig !== sig) {
        const fresh = storeRow(a);
        if (tr && tr.parentNode === body) {
          if (at === tr) at = fresh;
          body.replaceChild(fresh, tr);
        }
        tr = fresh;
      }
      drawn.set(a.agent_id, { sig, tr });
      if (at === tr) at = tr.nextSibling;
      else body.insertBefore(tr, at);
    }
    while (at) { const next = at.nextSibling; at.remove(); at = next; }
    ss.drawn = drawn;
    const empty = root.querySelector("#stores-empty");
    empty.hidden = listed.length > 0;
    empty.textContent = ss.filter.trim() ? "No store agent matches the filter."
      : ss.view === "offline" ? "Every store agent is online."
        : "No store agents yet. Create one with shelfsync-hub agent add --location CODE.";
    root.querySelector("#stores-note").textContent = listed.length > shown.length
      ? `showing ${NUM.format(shown.length)} of ${NUM.format(listed.length)}`
      : `${NUM.format(listed.length)} shown`;
    const more = root.querySelector("#stores-more");
    const rest = listed.length - shown.length;
    more.hidden = rest <= 0;
    if (rest > 0) {
      setText(more.querySelector(".stores-more-text"), `${NUM.format(rest)} more store agent${rest === 1 ? "" : "s"} ` +
        "not drawn: narrow the filter to a location or an agent id, or");
      setText(more.querySelector("button"), `show ${NUM.format(Math.min(rest, STORES_SHOWN))} more`);
    }
  }

  // #/overview: every store agent by location; #/overview/offline: those not online, longest offline first, so
  // which stores are down, and since when, is read at the top of the list and not among 200 online ones. The first
  // STORES_SHOWN are drawn, with a filter and "show more"; on a live change only what changed is drawn again.
  async function overview(filter) {
    if (!state.status) await refreshStatus();
    const st = state.status;
    const ss = state.stores;
    const every = storeAgents();
    const down = every.filter((a) => !a.online);
    const others = st.agents.length - every.length;
    const chips = h("div", { class: "chips", id: "stores-chips", role: "group", "aria-label": "Which stores" },
      h("a", { class: "chip", href: "#/overview", "aria-pressed": String(filter !== "offline") }, "All",
        h("span", { class: "n" }, NUM.format(every.length))),
      h("a", { class: "chip", id: "stores-offline", href: "#/overview/offline", "aria-pressed": String(filter === "offline") },
        "Offline or never synced", h("span", { class: "n" }, NUM.format(down.length))));
    // The agents that synced lately agree the hub's own clock is off (hub_clock in GET /v1/status): said above the
    // stores, whose clock skews below then read as the hub's error, not theirs.
    // Another hub on the same database judges the stores by other settings (settings_differ): said there too, once
    // per setting and hub.
    const hubClock = h("div", { id: "hub-clock-slot" },
      st.hub_clock ? h("p", { class: "warn-note", id: "hub-clock", role: "alert" }, st.hub_clock.message) : null,
      ...(st.settings_differ || []).map((d) => h("p", { class: "warn-note settings-differ" }, d.message)));
    const othersNote = h("div", { id: "stores-others" },
      others ? h("p", { class: "muted" }, `${others} reader, admin or revoked credential(s) are not listed.`) : null);
    if (ss.root && ss.root.isConnected && ss.view === filter) { // a live change: the page drawn is updated in place
      for (const part of [chips, hubClock, othersNote]) ss.root.querySelector("#" + part.id).replaceWith(part);
      drawStores();
      ss.root.querySelector("#hooks-section").replaceWith(hooksSection(st));
      return KEPT;
    }
    if (ss.view !== filter) ss.shown = STORES_SHOWN;
    ss.view = filter;
    ss.drawn = new Map();
    const search = h("input", {
      id: "stores-filter", type: "search", placeholder: "Filter by location or agent id…", value: ss.filter,
      autocomplete: "off", "aria-label": "Filter the store agents",
      oninput: debounce((e) => { ss.filter = e.target.value; ss.shown = STORES_SHOWN; drawStores(); }, 120),
    });
    const head = h("div", { class: "view-head" },
      h("div", {}, h("h1", {}, "Stores"),
        h("p", { class: "muted" }, `An agent is online when it synced in the last ${Math.round(st.online_within_s / 60)} minutes. ` +
          "An idle agent calls the hub every minute with nothing to send. The backlog is what the agent reported waiting in its outbox at its last sync.")),
      h("div", { class: "toolbar" }, search, h("span", { class: "count-note", id: "stores-note" }),
        csvLink("/v1/agents?format=csv", "Download CSV",
          "every credential with its last sync, mark, backlog, disk and clock skew, as a spreadsheet")));
    const tableWrap = table(
      ["Status", "Locations", "Agent", "Last sync", ["Events, last hour", "num"], ["High-water mark", "num"], ["Backlog", "num"], "Disk", ["Clock skew", "num"]],
      [], "");
    tableWrap.querySelector("tbody").id = "stores-body";
    tableWrap.querySelector(".empty").id = "stores-empty";
    const more = h("p", { class: "hint", id: "stores-more", hidden: true }, h("span", { class: "stores-more-text" }), " ",
      h("button", { type: "button", class: "button-quiet", onclick: () => { ss.shown += STORES_SHOWN; drawStores(); } }));
    ss.root = h("div", { class: "stores" }, head, hubClock, chips, tableWrap, more, othersNote, hooksSection(st));
    drawStores();
    return ss.root;
  }

  function hooksSection(st) {
    const hooks = st.webhooks || [];
    const hookRows = hooks.map((w) => h("tr", {},
      h("td", { class: "nowrap" }, w.failures ? pill(`Failing ×${w.failures}`, "bad")
        : w.aside ? pill("Aside: newer config elsewhere", "warn") // nobody delivers it unless a hub on that config runs
        : w.deliverer === "another hub" ? pill("Another hub delivers", "plain") : pill("Delivering", "good")),
      h("td", { class: "key" }, w.name),
      h("td", { class: "mono" }, w.url),
      h("td", {}, w.location || "all"),
      numCell(Number(w.cursor)),
      numCell(w.lag, { dimZero: true }),
      h("td", { class: "nowrap" }, ageEl(w.last_success_ms)),
      h("td", { class: "wrap" }, w.last_error || "")));
    return h("div", { class: "section", id: "hooks-section" },
      h("div", { class: "section-head" }, h("h2", {}, "Channel webhooks"),
        h("span", { class: "muted" }, "corrections pushed to the web shop and marketplaces")),
      table(["Status", "Name", "URL", "Location", ["Delivered up to", "num"], ["Behind", "num"], "Last success", "Last error"],
        hookRows, "No webhooks configured ([[webhooks]] in the hub config)."));
  }

  function stockKey(c) {
    return `${c.location}|${c.sku}`; // a location code never holds "|"
  }

  function stockRow(c) {
    return h("tr", { dataset: { key: stockKey(c) } },
      h("td", { class: "key" }, c.location),
      h("td", {}, skuWithName(c.sku)),
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
    return !q || c.sku.toLowerCase().includes(q) || c.location.toLowerCase().includes(q) ||
      nameOf(c.sku).toLowerCase().includes(q);
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
    if (state.stock.more) {
      return [h("p", { class: "hint stock-partial", id: "stock-partial" }, `The hub holds more counts ` +
        `${state.stock.location ? "at " + state.stock.location + " " : ""}than the ${NUM.format(STOCK_ROWS_LOADED)} read here ` +
        "(the first by location, then SKU): the filter and sorting see only those. Choose a location, or find one SKU " +
        "in every store with the search box at the top; the CSV download has every count."), wrap];
    }
    return wrap;
  }

  function redrawStock() {
    const old = document.querySelector("#view .stock-table-slot");
    if (old) old.replaceChildren(...[stockTable()].flat());
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
    const query = (st.location ? `?location=${encodeURIComponent(st.location)}&` : "?") + `limit=${STOCK_ROWS_LOADED}`;
    const first = await api("/v1/counts" + query);
    st.rows = first.counts;
    st.more = Boolean(first.next); // more counts than one read: the page shows the first ones and says so
    const select = h("select", {
      id: "stock-location", "aria-label": "Location",
      onchange: (e) => { st.location = e.target.value; render(); },
    }, h("option", { value: "" }, "All locations"), knownLocations().map((l) => h("option", { value: l, selected: l === st.location }, l)));
    const filter = h("input", {
      id: "stock-filter", type: "search", placeholder: "Filter by SKU, name or location…", value: st.filter, autocomplete: "off",
      oninput: debounce((e) => { st.filter = e.target.value; redrawStock(); }, 120),
    });
    st.noteEl = h("span", { class: "count-note", id: "stock-note" });
    const csv = csvLink("/v1/counts?format=csv" + (st.location ? "&location=" + encodeURIComponent(st.location) : ""),
      "Download CSV", "every count shown (all pages, not just the rows on screen), as a spreadsheet");
    csv.id = "stock-csv";
    const head = h("div", { class: "view-head" },
      h("div", {}, h("h1", {}, "Stock"), h("p", { class: "muted" }, "Counts by location and SKU, live from the change feed. Click a SKU for its ledger.")),
      h("div", { class: "toolbar" }, select, filter, st.noteEl, csv));
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

  // Walk a page of the ledger newest → oldest from the on_hand after its newest event (for the first page,
  // today's on_hand): the on_hand right after each event, per location. A count's "before" is its expected
  // quantity (counted − variance); rejected attempts changed nothing. Returns the on_hand before the page's
  // oldest event: where the next (older) page starts.
  function annotateBalances(events, start) {
    const running = new Map(start || []);
    for (const e of events) {
      e.after = null;
      if (e.effect === "rejected" || e.effect === "duplicate" || !ON_HAND_KINDS.has(e.kind)) continue;
      const now = running.get(e.location);
      if (now === undefined || now === null) continue;
      e.after = now;
      running.set(e.location, e.kind === "count" ? (e.variance === null ? null : e.qty - e.variance) : now - e.qty);
    }
    return running;
  }

  function ledgerRow(e) {
    const qty = e.kind === "count" ? h("td", { class: "num", title: "counted on the shelf" }, "= " + fmt(e.qty)) : numCell(e.qty, { signed: true, negative: false });
    const effect = pill(e.effect, EFFECT_TONES[e.effect] || "plain");
    const detail = e.rejection ? h("span", { class: "sub" }, e.rejection) : null;
    return h("tr", {},
      timeEl(e.occurred_at_time, "td", { class: "nowrap time" }),
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

  // A SKU's ledger, LEDGER_PAGE events a page, newest first. "Older" reads the page after the API's opaque
  // cursor (`next`); "Newer" reads the page before again, with the cursor it was first read with.
  async function ledgerPanel() {
    const s = state.sku;
    const lg = s.ledger;
    const cursor = lg.cursors[lg.page];
    const body = await api(`/v1/ledger?sku=${encodeURIComponent(s.sku)}&limit=${LEDGER_PAGE}` +
      (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
    if (lg.page === 0) lg.starts = [new Map([...s.counts.values()].map((c) => [c.location, c.on_hand]))];
    lg.starts[lg.page + 1] = annotateBalances(body.events, lg.starts[lg.page]);
    lg.next = body.next;
    lg.fresh = 0;
    const first = lg.page * LEDGER_PAGE + 1;
    const go = (page) => async () => {
      if (page > lg.page) lg.cursors[page] = lg.next;
      lg.page = page;
      await showLedger();
    };
    lg.noteEl = h("span", { class: "pager-note", id: "ledger-fresh", hidden: true });
    const pager = h("div", { class: "pager", id: "ledger-pager" },
      h("button", { type: "button", class: "button-secondary", id: "ledger-newer", disabled: lg.page === 0, onclick: go(lg.page - 1) }, "← Newer"),
      h("span", { class: "muted", id: "ledger-page" }, body.events.length
        ? `Page ${NUM.format(lg.page + 1)} · events ${NUM.format(first)}–${NUM.format(first + body.events.length - 1)}` : `Page ${NUM.format(lg.page + 1)}`),
      h("button", { type: "button", class: "button-secondary", id: "ledger-older", disabled: !lg.next, onclick: go(lg.page + 1) }, "Older →"),
      lg.noteEl);
    return [table(["Occurred", "Location", "Kind", ["Qty", "num"], "Effect", ["On hand after", "num"], ["Variance", "num"],
      "Ref / reason", "Source"], body.events.map(ledgerRow), "No events for this SKU."), pager];
  }

  async function showLedger() {
    const slot = $("sku-ledger");
    if (state.sku && slot) slot.replaceChildren(...await ledgerPanel());
  }

  async function skuView(sku) {
    // by ?sku=, not /v1/skus/{sku}/counts: a browser removes a SKU stored as "." or ".." from a path (RFC 3986)
    const counts = await api(`/v1/counts?sku=${encodeURIComponent(sku)}`);
    state.sku = {
      sku, counts: new Map(counts.counts.map((c) => [c.location, c])), totalsEl: h("div", { class: "totals" }),
      ledger: { cursors: [null], page: 0, next: null, starts: [], fresh: 0, noteEl: null },
    };
    const ledger = await ledgerPanel();
    const rows = counts.counts.map(stockRow);
    const name = nameOf(sku);
    const head = h("div", { class: "view-head" },
      h("div", { class: "sku-head" }, h("div", { class: "stat-label" }, "SKU"), h("h1", { class: "sku-title" }, sku),
        name ? h("div", { class: "sku-name", id: "sku-name" }, name) : null),
      h("a", { href: "#/stock" }, "← All stock"));
    renderSkuTotals();
    return [head, state.sku.totalsEl,
      h("div", { class: "section" }, h("div", { class: "section-head" }, h("h2", {}, "Counts by location")),
        h("div", { id: "sku-counts" }, table(["Location", "SKU", ["On hand", "num"], ["Reserved", "num"], ["Available", "num"],
          ["In transit", "num"], ["Safety stock", "num"], "Updated"], rows, "The hub has no count of this SKU anywhere."))),
      h("div", { class: "section" }, h("div", { class: "section-head" }, h("h2", {}, "Ledger"),
        h("span", { class: "muted" }, "newest first, in resolution order; each event's effect on the count"),
        csvLink(`/v1/ledger?sku=${encodeURIComponent(sku)}&format=csv`, "Download CSV", "this SKU's whole ledger, every page, as a spreadsheet")),
        h("div", { id: "sku-ledger" }, ledger))];
  }

  // A change of the SKU: the first page is read again; an older page stays put and says newer events came.
  const reloadLedger = debounce(async () => {
    if (!state.sku) return;
    const lg = state.sku.ledger;
    if (lg.page === 0) {
      await showLedger();
      return;
    }
    lg.fresh += 1;
    if (lg.noteEl) {
      lg.noteEl.hidden = false;
      lg.noteEl.replaceChildren("The count changed since this page was read: ",
        h("a", { href: "#", onclick: (e) => { e.preventDefault(); lg.page = 0; showLedger(); } }, "back to the newest"));
    }
  }, 400);

  // The Exceptions page's filters live in its address, so a link shows the same view: #/exceptions/<kind>?
  // location=S042&since=hour. The hub filters (GET /v1/exceptions?location=&kind=&since=), so a store's last hour
  // is read whole however long the chain's list is; without a filter the page shows the status read's exceptions.
  const EXCEPTION_SINCE = { hour: ["Last hour", 3600000], day: ["Last day", 86400000] };

  function hashQuery() {
    const at = window.location.hash.indexOf("?");
    return new URLSearchParams(at < 0 ? "" : window.location.hash.slice(at + 1));
  }

  function exceptionsHash(f) {
    const q = new URLSearchParams();
    if (f.location) q.set("location", f.location);
    if (f.since) q.set("since", f.since);
    const text = q.toString();
    return "#/exceptions" + (f.kind ? "/" + encodeURIComponent(f.kind) : "") + (text ? "?" + text : "");
  }

  // One read of the filter at the API's largest page: its rows, and whether the hub lists more.
  async function readExceptions(params) {
    params.set("limit", String(EXCEPTIONS_READ));
    const body = await api("/v1/exceptions?" + params.toString());
    return { rows: body.exceptions, more: Boolean(body.next) };
  }

  function countOf(n, more) {
    return fmt(n) + (more ? "+" : "");
  }

  // What a person was typing in the location box when a live redraw replaced it: put back, with the focus.
  const exceptionsDraft = { text: null, focused: false };

  function exceptionsFilters(f) {
    const go = (change) => { exceptionsDraft.text = null; window.location.hash = exceptionsHash({ ...f, ...change }); };
    const box = h("input", {
      id: "exceptions-location", type: "search", list: "exceptions-locations", placeholder: "Location, e.g. S042",
      "aria-label": "Location", autocomplete: "off", spellcheck: "false",
      value: exceptionsDraft.text !== null ? exceptionsDraft.text : f.location,
      oninput: (e) => { exceptionsDraft.text = e.target.value; },
      onchange: (e) => go({ location: e.target.value.trim() }),
    });
    const locations = h("datalist", { id: "exceptions-locations" }, knownLocations().map((l) => h("option", { value: l })));
    const kinds = Object.keys(EXCEPTION_KINDS);
    const kind = h("select", { id: "exceptions-kind", "aria-label": "Kind", onchange: (e) => go({ kind: e.target.value }) },
      h("option", { value: "" }, "Every kind"),
      (kinds.includes(f.kind) || !f.kind ? kinds : [f.kind, ...kinds]).map((k) =>
        h("option", { value: k, selected: k === f.kind }, (EXCEPTION_KINDS[k] || [k])[0])));
    const since = h("select", { id: "exceptions-since", "aria-label": "Since", onchange: (e) => go({ since: e.target.value }) },
      h("option", { value: "" }, "All time"),
      Object.entries(EXCEPTION_SINCE).map(([key, [label]]) => h("option", { value: key, selected: key === f.since }, label)));
    if (exceptionsDraft.focused) setTimeout(() => { box.focus(); exceptionsDraft.focused = false; }, 0);
    return h("form", { class: "toolbar", id: "exceptions-filters", role: "search",
      onsubmit: (e) => { e.preventDefault(); go({ location: box.value.trim() }); } },
    box, locations, kind, since);
  }

  async function exceptionsView(kind) {
    const query = hashQuery();
    const f = { kind: kind || "", location: (query.get("location") || "").trim(),
      since: EXCEPTION_SINCE[query.get("since")] ? query.get("since") : "" };
    const typing = document.activeElement && document.activeElement.id === "exceptions-location";
    exceptionsDraft.focused = typing;
    if (!typing) exceptionsDraft.text = null;
    await refreshStatus();
    const params = new URLSearchParams();
    if (f.location) params.set("location", f.location);
    if (f.since) params.set("since", new Date(Date.now() - EXCEPTION_SINCE[f.since][1]).toISOString());
    let error = null;
    let all = { rows: [], more: false };
    let matching = all;
    try {
      all = f.location || f.since ? await readExceptions(new URLSearchParams(params))
        : { rows: state.exceptions, more: state.exceptionsMore };
      matching = !f.kind ? all : !all.more ? { rows: all.rows.filter((e) => e.kind === f.kind), more: false }
        : await readExceptions(new URLSearchParams([...params, ["kind", f.kind]]));
    } catch (err) {
      if (err.message === "signed out") throw err;
      error = err.message; // the hub's sentence: a location that is not a code …
    }
    const byKind = new Map();
    for (const e of all.rows) byKind.set(e.kind, (byKind.get(e.kind) || 0) + 1);
    if (f.kind) byKind.set(f.kind, matching.rows.length);
    const chips = h("div", { class: "chips", role: "group", "aria-label": "Kinds" },
      h("a", { class: "chip", href: exceptionsHash({ ...f, kind: "" }), "aria-pressed": String(!f.kind) }, "All",
        h("span", { class: "n" }, countOf(all.rows.length, all.more))),
      [...byKind.entries()].sort().map(([k, n]) => h("a", { class: "chip", href: exceptionsHash({ ...f, kind: k }), "aria-pressed": String(f.kind === k) },
        (EXCEPTION_KINDS[k] || [k])[0], h("span", { class: "n" }, countOf(n, k === f.kind ? matching.more : all.more)))));
    const of = [f.location ? `at ${f.location}` : "", f.since ? `in the ${EXCEPTION_SINCE[f.since][0].toLowerCase()}` : ""].filter(Boolean).join(" ");
    const count = h("p", { class: "count-note", id: "exceptions-count" }, error ? "" :
      `${countOf(matching.rows.length, matching.more)} exception${matching.rows.length === 1 && !matching.more ? "" : "s"}` +
      (f.kind ? ` of kind ${(EXCEPTION_KINDS[f.kind] || [f.kind])[0]}` : "") + (of ? " " + of : ""));
    const failed = error ? h("p", { class: "form-error", id: "exceptions-error", role: "alert" }, error) : null;
    const partial = all.more ? h("p", { class: "hint partial", id: "exceptions-partial" },
      `The hub lists more exceptions${of ? " " + of : ""} than the newest ${NUM.format(all.rows.length)} read here: each count above is at least ` +
      "that many, and older exceptions are not shown. The CSV download has every one.") : null;
    const shown = matching.rows.slice(0, EXCEPTIONS_SHOWN);
    const cut = matching.rows.length > shown.length ? h("p", { class: "hint partial", id: "exceptions-shown" },
      `Showing the newest ${NUM.format(shown.length)} of ${countOf(matching.rows.length, matching.more)}: choose a kind or a location ` +
      "to see others, or download the CSV for every one.") : null;
    const rows = shown.map((e) => {
      const [label, tone] = EXCEPTION_KINDS[e.kind] || [e.kind, "plain"];
      const barcode = e.kind === "unknown_barcode" && e.data ? e.data.barcode : null;
      const order = e.kind === "channel_order_refused" && e.data && e.data.order_id ? e.data : null;
      return h("tr", { dataset: barcode ? { barcode } : order ? { order: order.order_id } : {} },
        h("td", { class: "nowrap" }, pill(label, tone), barcode ? h("div", { class: "row-action" },
          h("button", { type: "button", class: "button-secondary map-button", title: "map this barcode to a SKU",
            onclick: () => openMapDialog(e) }, "Map…")) : null,
        order ? h("div", { class: "row-action" },
          h("button", { type: "button", class: "button-secondary dismiss-button",
            title: "take this entry off the list once the sale is booked by hand", onclick: () => openDismissDialog(e) },
          "Dismiss…")) : null),
        h("td", { class: "key" }, e.location || "–"),
        h("td", {}, e.sku ? skuWithName(e.sku) : "–"),
        h("td", { class: "wrap" }, e.detail),
        h("td", { class: "nowrap" }, e.at_ms ? ageEl(e.at_ms) : "–"));
    });
    const csvQuery = new URLSearchParams([...params, ...(f.kind ? [["kind", f.kind]] : []), ["format", "csv"]]);
    const done = dismissNote.text && Date.now() - dismissNote.at < DISMISS_NOTE_MS
      ? h("p", { class: "hint done", id: "exceptions-dismissed", role: "status" }, dismissNote.text) : null;
    return [h("div", { class: "view-head" }, h("div", {}, h("h1", {}, "Exceptions"),
      h("p", { class: "muted" }, "Negative stock, unknown barcodes, divergence from other systems, transfer differences and refused events. " +
        "Map an unknown barcode to its SKU with Map…: its scans are then booked on that SKU. " +
        "Dismiss… a channel sale not booked once the sale is booked by hand.")),
      h("div", { class: "toolbar" }, csvLink("/v1/exceptions?" + csvQuery.toString(), "Download CSV",
        of || f.kind ? "every exception of this view, as a spreadsheet" : "every exception, as a spreadsheet"))),
    exceptionsFilters(f), chips, count, ...[done, failed, partial, cut].filter(Boolean),
    table(["Kind", "Location", "SKU", "What happened", "When"], rows, error ? "Nothing to show." : "Nothing needs attention.")];
  }

  // --- mapping an unknown barcode to a SKU (PUT /v1/catalog) ------------------------------------------------
  // The session cookie only reads (the hub never takes it on a write), so the mapping is sent with an admin
  // credential pasted here: kept in this tab's memory only (gone on reload or sign-out), sent only to this
  // hub. Without one, the dialog shows the exact command an admin runs instead.

  let adminCredential = null;

  function shellQuote(text) {
    return "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function mapBody(barcode, sku, pack, description) {
    const item = { barcode, sku, pack_size: pack };
    if (description) item.description = description;
    return JSON.stringify({ items: [item] });
  }

  function mapCommand(body) {
    return `curl -sS -X PUT -H "Authorization: Bearer $SHELFSYNC_ADMIN_TOKEN" -H "Content-Type: application/json" ` +
      `-d ${shellQuote(escapeBidi(body))} ${window.location.origin}/v1/catalog`;
  }

  function openMapDialog(exception) {
    const barcode = exception.data.barcode;
    const dialog = $("map-dialog");
    const sku = h("input", { id: "map-sku", list: "map-skus", required: true, autocomplete: "off", spellcheck: "false",
      placeholder: "e.g. MUG-WHITE" });
    const pack = h("input", { id: "map-pack", type: "number", min: "1", max: "1000000", step: "1", value: "1", required: true });
    const description = h("input", { id: "map-description", maxlength: "256", autocomplete: "off" });
    const credential = h("input", { id: "map-credential", type: "password", autocomplete: "off", spellcheck: "false" });
    const command = h("code", { class: "command-text", id: "map-command" });
    const error = h("p", { class: "form-error", id: "map-error", role: "alert", hidden: true });
    const confirm = h("button", { type: "submit", class: "button-primary", id: "map-confirm" }, "Map");
    const update = () => {
      const body = mapBody(barcode, sku.value.trim(), Number(pack.value) || 1, description.value.trim());
      command.textContent = mapCommand(body);
      confirm.disabled = !sku.value.trim() || !(adminCredential || credential.value.trim());
    };
    for (const input of [sku, pack, description, credential]) input.addEventListener("input", update);
    const form = h("form", { class: "dialog-body", method: "dialog" },
      h("h2", {}, "Map barcode ", h("span", { class: "mono" }, barcode)),
      h("p", { class: "muted" }, `Scans of this barcode were booked under ${exception.sku}` +
        (exception.location ? ` at ${exception.location}` : "") + ". Mapping it to a SKU books them, and every later scan, on that SKU."),
      h("label", { for: "map-sku" }, "SKU"), sku,
      h("datalist", { id: "map-skus" }, [...new Set([...state.skus, ...state.stock.rows.map((c) => c.sku)])]
        .filter((x) => !x.startsWith("unknown:")).sort().map((x) => h("option", { value: x }, nameOf(x) || null))),
      h("label", { for: "map-pack" }, "Units per scan (a case barcode: its pack size)"), pack,
      h("label", { for: "map-description" }, "Description (optional)"), description,
      adminCredential ? h("p", { class: "muted", id: "map-credential-kept" }, "Using the admin credential you gave in this tab.")
        : [h("label", { for: "map-credential" }, "Admin credential"), credential,
          h("p", { class: "hint" }, "The dashboard's own session only reads, so a mapping needs an admin credential. " +
            "It is kept in this tab's memory only, until you reload or sign out.")],
      error,
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", class: "button-secondary", onclick: () => dialog.close() }, "Cancel"), confirm),
      h("details", { class: "command" }, h("summary", {}, "Or run this command as an admin"), command));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const token = adminCredential || credential.value.trim();
      confirm.disabled = true;
      error.hidden = true;
      try {
        const answer = await putCatalog(token, mapBody(barcode, sku.value.trim(), Number(pack.value) || 1, description.value.trim()));
        adminCredential = token;
        dialog.close();
        banner(`Mapped barcode ${barcode} to ${sku.value.trim()}: ${NUM.format(answer.rebooked)} scan(s) re-booked.`);
        setTimeout(() => banner(null), 8000);
        await loadCatalog(true);
        await refreshStatus();
        render();
      } catch (err) {
        if (err.status === 401 || err.status === 403) adminCredential = null;
        setText(error, err.message);
        error.hidden = false;
        update();
      }
    });
    update();
    dialog.replaceChildren(form);
    dialog.showModal();
    sku.focus();
  }

  async function putCatalog(token, body) {
    let response;
    try {
      response = await fetch("/v1/catalog", { method: "PUT", credentials: "omit", body,
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", Accept: "application/json" } });
    } catch (err) {
      throw Object.assign(new Error("The hub cannot be reached; try again."), { status: 0 });
    }
    let answer = null;
    try { answer = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const why = answer && answer.detail ? answer.detail : `HTTP ${response.status}`;
      throw Object.assign(new Error(`Not mapped: ${why}.`), { status: response.status });
    }
    return answer;
  }

  // --- dismissing a refused channel order (POST /v1/channels/{name}/orders/{order_id}/dismiss) ----------------
  // Staff booked the sale of a Square order the hub refused by hand; an admin takes its entry off the list. As a
  // mapping, it is sent with the admin credential given in this tab (the session cookie never writes), after a
  // confirmation saying what it does: the hub will not book that order afterwards, even when Square's retry could.

  const DISMISS_NOTE_MS = 60000; // the result stays on the Exceptions page this long, through its live redraws
  const dismissNote = { text: null, at: 0 };

  function dismissPath(order) {
    return `/v1/channels/${encodeURIComponent(order.channel)}/orders/${encodeURIComponent(order.order_id)}/dismiss`;
  }

  function dismissCommand(order) {
    return `curl -sS -X POST -H "Authorization: Bearer $SHELFSYNC_ADMIN_TOKEN" ${window.location.origin}${dismissPath(order)}`;
  }

  function openDismissDialog(exception) {
    const order = exception.data;
    const dialog = $("dismiss-dialog");
    const credential = h("input", { id: "dismiss-credential", type: "password", autocomplete: "off", spellcheck: "false" });
    const error = h("p", { class: "form-error", id: "dismiss-error", role: "alert", hidden: true });
    const confirm = h("button", { type: "submit", class: "button-primary", id: "dismiss-confirm" }, "Dismiss");
    const update = () => { confirm.disabled = !(adminCredential || credential.value.trim()); };
    credential.addEventListener("input", () => { error.hidden = true; update(); });
    const sale = Boolean(order.adjustment_id); // a register sale no order the hub booked matches (sale:<id>)
    const form = h("form", { class: "dialog-body", method: "dialog" },
      h("h2", {}, sale ? "Dismiss Square sale " : "Dismiss Square order ", h("span", { class: "mono" },
        sale ? order.adjustment_id : order.order_id)),
      h("p", { class: "muted" }, `Channel ${order.channel}` + (exception.location ? `, sold at ${exception.location}` : "") +
        (sale ? ": Square sold this at a register, and no order the hub booked matches it (its row says what to check)."
          : ": the hub refused this order (its row says why), so it never booked its sale.")),
      h("p", { id: "dismiss-warning" }, sale ? "Dismiss it only once its sale is booked by hand. The entry leaves the " +
        "list, and the counts pushed to Square no longer take the sale off (the hub's level holds it). " +
        "A dismissal made by mistake is undone with POST …/undismiss (admin)." : "Dismiss it only once its sale is booked by hand. The entry leaves the list, and " +
        "the hub will not book this order afterwards, even when Square's retry could (that would book the sale twice). " +
        "A dismissal made by mistake is undone with POST …/undismiss (admin)."),
      adminCredential ? h("p", { class: "muted", id: "dismiss-credential-kept" }, "Using the admin credential you gave in this tab.")
        : [h("label", { for: "dismiss-credential" }, "Admin credential"), credential,
          h("p", { class: "hint" }, "The dashboard's own session only reads, so dismissing needs an admin credential. " +
            "It is kept in this tab's memory only, until you reload or sign out.")],
      error,
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", class: "button-secondary", onclick: () => dialog.close() }, "Cancel"), confirm),
      h("details", { class: "command" }, h("summary", {}, "Or run this command as an admin"),
        h("code", { class: "command-text", id: "dismiss-command" }, dismissCommand(order))));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const token = adminCredential || credential.value.trim();
      confirm.disabled = true;
      error.hidden = true;
      try {
        const answer = await postDismiss(token, order);
        adminCredential = token;
        dialog.close();
        dismissNote.text = sale
          ? `Dismissed Square sale ${order.adjustment_id} of channel ${answer.order.channel}: it left the list, and ` +
            `the counts pushed to Square no longer take it off (dismissed by ${answer.order.dismissed_by}).`
          : `Dismissed Square order ${answer.order.order_id} of channel ${answer.order.channel}: ` +
            `it left the list, and the hub will not book it (dismissed by ${answer.order.dismissed_by}).`;
        dismissNote.at = Date.now();
        await refreshStatus();
        render();
      } catch (err) {
        if (err.status === 401 || err.status === 403) adminCredential = null;
        setText(error, err.message);
        error.hidden = false;
        update();
      }
    });
    update();
    dialog.replaceChildren(form);
    dialog.showModal();
    (adminCredential ? confirm : credential).focus();
  }

  async function postDismiss(token, order) {
    let response;
    try {
      response = await fetch(dismissPath(order), { method: "POST", credentials: "omit",
        headers: { Authorization: `Bearer ${token}`, Accept: "application/json" } });
    } catch (err) {
      throw Object.assign(new Error("The hub cannot be reached; try again."), { status: 0 });
    }
    let answer = null;
    try { answer = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const why = answer && answer.detail ? answer.detail : `HTTP ${response.status}`;
      throw Object.assign(new Error(`Not dismissed: ${why}.`), { status: response.status });
    }
    return answer;
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

  // Held because of the hub's own clock (hub_clock_off_ms): released all at once, at their own time.
  function releaseCommand() {
    return `curl -sS -X POST -H "Authorization: Bearer $SHELFSYNC_ADMIN_TOKEN" ${window.location.origin}/v1/quarantine/release`;
  }

  // What is held pending in all (GET /v1/quarantine's pending, counted by the hub): a release takes every one of
  // them, not only those on the page shown (at most QUARANTINE_LIMIT).
  function pendingTotals(rows, pending) {
    if (pending) {
      return { hubClock: pending.hub_clock, byAgent: new Map(Object.entries(pending.unattributed)),
        vouched: pending.vouched ? new Map(Object.entries(pending.vouched)) : vouchedByAgent(rows) }; // 1.12 counts them
    }
    const byAgent = new Map(); // an older hub's: the rows shown
    for (const q of rows.filter(unattributed)) byAgent.set(q.agent_id, (byAgent.get(q.agent_id) || 0) + 1);
    return { hubClock: rows.filter((q) => q.status === "pending" && !unattributed(q)).length, byAgent,
      vouched: vouchedByAgent(rows) };
  }

  function hubClockNote(rows, totals) {
    if (!totals.hubClock) return null;
    const shown = rows.find((q) => q.status === "pending" && !unattributed(q));
    const off = shown ? shown.hub_clock_off_ms : null;
    return h("div", { class: "warn-note", id: "hub-clock-held", role: "note" },
      h("p", {}, `Of those held, ${NUM.format(totals.hubClock)} ${totals.hubClock === 1 ? "was" : "were"} held because of the hub's own clock, not the stores'` +
        (off === null ? ", which agreed with each other. " : `: it was ${spanText(off)} ${off > 0 ? "ahead of" : "behind"} their clocks, which agreed with each other. `) +
        "The hub applies each at its own time once its clock is right again; those still outside the window then stay here. " +
        "An admin releases them all now with:"),
      h("code", { class: "command-text", id: "release-command" }, releaseCommand()));
  }

  // Held when the hub could not tell whose clock was wrong (no hub_clock_off_ms: a lone store, stores that disagree):
  // an admin who checked both clocks applies a store's together, as the one found wrong says. `override` adds
  // override_vouched, which the hub takes for one store's only (POST /v1/quarantine/release).
  function releaseHeldCommand(wrongClock, agentId, override) {
    const body = JSON.stringify({ wrong_clock: wrongClock, agent_id: agentId, ...(override ? { override_vouched: true } : {}) });
    return `curl -sS -X POST -H "Authorization: Bearer $SHELFSYNC_ADMIN_TOKEN" -H "Content-Type: application/json" ` +
      `-d '${body}' ${window.location.origin}/v1/quarantine/release`;
  }

  function unattributed(q) {
    return q.status === "pending" && (q.hub_clock_off_ms === null || q.hub_clock_off_ms === undefined);
  }

  // Per agent, the most other stores that vouched for the hub's clock when one of its shown held rows was held (an
  // older hub's pending has no vouched): the hub answers {"wrong_clock": "hub"} for that store with 409 unless overridden.
  function vouchedByAgent(rows) {
    const most = new Map();
    for (const q of rows.filter(unattributed)) {
      const n = q.hub_clock_vouched;
      if (n !== null && n !== undefined) most.set(q.agent_id, Math.max(n, most.get(q.agent_id) || 0));
    }
    return most;
  }

  function unattributedNote(totals) {
    const byAgent = totals.byAgent;
    if (!byAgent.size) return null;
    const vouched = totals.vouched;
    const all = [...byAgent.values()].reduce((a, b) => a + b, 0);
    const command = (agentId, wrongClock, what, override) => h("div", { class: "command" }, h("div", { class: "sub" }, what),
      h("code", { class: "command-text", dataset: { wrongClock, agent: agentId, ...(override ? { override: "vouched" } : {}) } },
        releaseHeldCommand(wrongClock, agentId, override)));
    const commands = (agentId) => {
      const n = vouched.get(agentId);
      const store = command(agentId, "store", "Its clock was wrong: apply each at the time the hub received it:");
      if (n === undefined) {
        return [store,
          command(agentId, "hub", "The hub's clock was wrong: apply each at its own time (those outside the window even so stay):")];
      }
      return [
        h("div", { class: "sub warn", dataset: { field: "vouched-store" } },
          `${NUM.format(n)} other ${n === 1 ? "store" : "stores"} sided with the hub's clock when these were held: ` +
          "this store's clock was most likely the wrong one, and the hub refuses to release them as if its own was."),
        store,
        command(agentId, "hub", "Override — only if a time server shows the hub's clock was wrong all the same, against " +
          "what the other stores said (the hub logs your name): apply each at its own time:", true)];
    };
    return h("div", { class: "unattributed-held", id: "unattributed-held", role: "note" },
      h("p", { class: "muted" }, `For ${NUM.format(all)} of those held the hub could not tell whose clock was wrong, ` +
        "its own or the store's (a store alone, or stores whose clocks disagree). Check both against a time server; " +
        "then an admin applies one store's together, as the clock found wrong says, instead of one by one:"),
      ...[...byAgent].map(([agentId, n]) => h("details", { dataset: { agent: agentId } },
        h("summary", {}, h("span", { class: "mono" }, agentId), ` — ${NUM.format(n)} held`),
        ...commands(agentId))));
  }

  // Held while most of the other stores put the hub's clock right (hub_clock_vouched): the sender's clock was the odd
  // one, so "the hub's clock was wrong" contradicts them (the hub refuses that release with 409).
  function vouchedNote(q) {
    const n = q.hub_clock_vouched;
    if (n === null || n === undefined) return null;
    return h("div", { class: "sub warn", dataset: { field: "vouched" } },
      `${NUM.format(n)} other ${n === 1 ? "store" : "stores"} said the hub's clock was right when this was held: ` +
      "the store's clock was most likely the wrong one.");
  }

  function resolveCell(q) {
    if (q.status !== "pending") {
      return h("td", { class: "wrap" }, `${q.status} by `, h("span", { class: "mono" }, q.resolved_by || "–"),
        h("span", { class: "sub" }, q.resolved_at_ms ? isoTitle(q.resolved_at_ms) : ""), vouchedNote(q));
    }
    const command = (action, what) => h("div", { class: "command" }, h("div", { class: "sub" }, what),
      h("code", { class: "command-text", dataset: { action } }, resolveCommand(q, action)));
    return h("td", { class: "wrap resolve" }, vouchedNote(q), h("details", {},
      h("summary", {}, "How to resolve"),
      ...(q.hub_clock_off_ms !== null && q.hub_clock_off_ms !== undefined
        ? [h("div", { class: "sub", dataset: { field: "hub-clock" } }, "Held because of the hub's own clock: " +
          "it is applied at its own time once the hub's clock is right (or with the others, by the command above).")]
        : [h("div", { class: "sub", dataset: { field: "whose-clock" } }, "Or with the other held movements of its store, " +
          "by the commands above, once you know whose clock was wrong.")]),
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
      h("td", { class: "nowrap" }, skuWithName(q.sku)),
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
    const totals = status === "pending" || status === "all" ? pendingTotals(rows, body.pending) : { hubClock: 0, byAgent: new Map(), vouched: new Map() };
    const held = body.pending && (status === "pending" || status === "all")
      ? h("p", { id: "pending-total", dataset: { total: String(body.pending.total) } },
        `${NUM.format(body.pending.total)} held pending in all.`) : null;
    return [h("div", { class: "view-head" }, h("div", {}, h("h1", {}, "Quarantine"),
      h("p", { class: "muted" }, "Movements the hub held back because the store machine's clock was outside the hub's clock window: " +
        "they are not in any count until an admin applies them at the time the hub received them, or discards them."),
      h("p", { class: "muted" }, "The dashboard only reads. An admin resolves each one with an admin credential ",
        h("code", {}, "shelfsync-hub agent add --role admin"), ", exported as ", h("code", {}, "SHELFSYNC_ADMIN_TOKEN"),
        ", by running the command shown under How to resolve.")),
      h("div", { class: "toolbar" }, csvLink(`/v1/quarantine?status=${status}&format=csv`, "Download CSV",
        `every ${status === "all" ? "" : status + " "}held event (all pages), as a spreadsheet`))),
    chips, ...[held, note, hubClockNote(rows, totals), unattributedNote(totals)].filter(Boolean),
    table(["Status", "Agent", "Location", "SKU", "Kind", ["Qty", "num"], "Stamp it carried", "Received by the hub",
      ["How far off", "num"], "Resolve"], rows.map(quarantineRow),
      status === "pending" ? "Nothing is held: every store's clock was within the window." : "Nothing here.")];
  }

  // --- shrinkage: what counts found missing or over, by location and SKU, over a period -------------------

  function isoDate(d) {
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
  }

  // A day picked in the browser's time zone, as the instant its midnight is (the API takes ISO 8601 with a zone).
  function dayDate(value) {
    const [y, m, d] = value.split("-").map(Number);
    return new Date(y, m - 1, d);
  }

  async function varianceView() {
    if (!state.status) await refreshStatus();
    const v = state.variance;
    if (!v.from) {
      const today = new Date();
      v.to = isoDate(today);
      v.from = isoDate(new Date(today.getFullYear(), today.getMonth(), today.getDate() - 30));
    }
    const to = dayDate(v.to);
    to.setDate(to.getDate() + 1); // the period includes the "to" day
    const query = (by) => `/v1/reports/variance?by=${by}&from=${encodeURIComponent(dayDate(v.from).toISOString())}` +
      `&to=${encodeURIComponent(to.toISOString())}` + (v.location ? `&location=${encodeURIComponent(v.location)}` : "");
    // One page of the report, its rows of the most shrinkage first (the hub's order), with the totals and the row
    // count of every row: the whole report of a stocktake was 9.8 MB.
    const body = await api(query("sku") + `&limit=${VARIANCE_ROWS_SHOWN}`);
    const drawn = body.rows;
    const held = body.row_count ?? drawn.length;
    const shownNote = body.next ? h("p", { class: "hint", id: "variance-shown" }, `Showing the ${NUM.format(drawn.length)} ` +
      `rows of the most shrinkage of ${NUM.format(held)}, most first: choose a location to see others, or `,
      h("a", { href: query("sku") + "&format=csv", download: "", dataset: { csv: "" } }, "download the CSV of every row"),
      ".") : null;
    const rows = drawn.map((r) => h("tr", { dataset: { key: `${r.location}|${r.sku}` } },
      h("td", { class: "key" }, r.location),
      h("td", {}, skuWithName(r.sku)),
      numCell(r.counts),
      numCell(-r.shrinkage, { field: "shrinkage", dimZero: true }),
      numCell(r.overage, { field: "overage", dimZero: true, signed: true }),
      numCell(r.net_variance, { field: "net", signed: true }),
      timeEl(r.last_count_time, "td", { class: "nowrap time" })));
    const redraw = (field) => (e) => { v[field] = e.target.value; if (v.from && v.to) render(); };
    const controls = h("div", { class: "toolbar" },
      h("select", { id: "variance-location", "aria-label": "Location", onchange: redraw("location") },
        h("option", { value: "" }, "All locations"), knownLocations().map((l) => h("option", { value: l, selected: l === v.location }, l))),
      h("label", { class: "field" }, "From", h("input", { id: "variance-from", type: "date", value: v.from, max: v.to, onchange: redraw("from") })),
      h("label", { class: "field" }, "To", h("input", { id: "variance-to", type: "date", value: v.to, min: v.from, onchange: redraw("to") })));
    const t = body.totals;
    const totals = h("div", { class: "totals" }, [["Counts", fmt(t.counts)], ["Shrinkage, units", fmt(-t.shrinkage)],
      ["Found over, units", signed(t.overage)], ["Net variance", signed(t.net_variance)]].map(([label, value]) =>
      h("div", { class: "card total" }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value))));
    const downloads = h("div", { class: "toolbar downloads" },
      csvLink(query("sku") + "&format=csv", "Download CSV by SKU"),
      csvLink(query("location") + "&format=csv", "by location"),
      csvLink(query("count") + "&format=csv", "every count"));
    return [h("div", { class: "view-head" }, h("div", {}, h("h1", {}, "Shrinkage"),
      h("p", { class: "muted" }, "What cycle counts found missing (shrinkage) or over, against what the ledger expected at each count, " +
        `from ${timeText(body.from)} to ${timeText(body.to)}.`)), controls),
    totals, h("div", { class: "section" }, h("div", { class: "section-head" }, h("h2", {}, "By location and SKU"), downloads),
      shownNote, table(["Location", "SKU", ["Counts", "num"], ["Shrinkage", "num"], ["Over", "num"], ["Net", "num"], "Last count"], rows,
        "No count in this period found a difference to look at."))];
  }

  // --- catalog: the barcode catalog and its CSV import (PUT /v1/catalog?partial=true) -------------------------
  // An operator's file is imported as a retailer expects: its good rows are written, each refused row is listed
  // with its line, column and why, and the refused rows download as a CSV to fix and import again (its problem
  // column is left aside). "All or nothing" is there for who wants it. The import is sent with the admin
  // credential given in this tab (the session cookie only reads), as a mapping is. A browser sends the file's bytes
  // as they are: the person says which charset the file is saved in (an ERP's export in Windows-1252, a Japanese
  // Excel's in Shift_JIS), and the hub reads it in that one (Content-Type: text/csv; charset=...).

  const catalogImport = { result: null, error: null, problems: [], refusedUrl: null, partial: true, charset: "" };
  const CATALOG_CHARSETS = [ // value: the Content-Type's charset ("": none, the hub reads UTF-8 or UTF-16 with its mark)
    ["", "UTF-8 (Excel's \"CSV UTF-8\", or UTF-16 \"Unicode Text\")"],
    ["windows-1252", "Windows-1252 (Western European: Excel's \"CSV\" on Windows)"],
    ["iso-8859-15", "ISO-8859-15 (Latin-9, Western European with €)"],
    ["windows-1250", "Windows-1250 (Central European)"],
    ["windows-1251", "Windows-1251 (Cyrillic)"],
    ["windows-1253", "Windows-1253 (Greek)"],
    ["windows-1254", "Windows-1254 (Turkish)"],
    ["macintosh", "Mac OS Roman"],
    ["shift_jis", "Shift_JIS (Japanese)"],
    ["gb18030", "GB18030 (Simplified Chinese)"],
    ["big5", "Big5 (Traditional Chinese)"],
    ["euc-kr", "EUC-KR (Korean)"],
  ];

  function catalogImportCommand(partial, charset) {
    return `curl -sS -X PUT -H "Authorization: Bearer $SHELFSYNC_ADMIN_TOKEN" -H "Content-Type: text/csv${charset ? "; charset=" + charset : ""}" ` +
      `--data-binary @catalog.csv '${window.location.origin}/v1/catalog${partial ? "?partial=true" : ""}'`;
  }

  function refusedTable(problems) {
    return table(["Line", "Column", "Why"], problems.map((p) => h("tr", { dataset: { line: String(p.line) } },
      h("td", { class: "num" }, NUM.format(p.line)), h("td", { class: "mono" }, p.column || "the row"),
      h("td", {}, p.reason))), "");
  }

  async function catalogView() {
    await loadCatalog(true).catch(() => {});
    const file = h("input", { id: "catalog-file", type: "file", accept: ".csv,.txt,text/csv", required: true });
    const credential = h("input", { id: "catalog-credential", type: "password", autocomplete: "off", spellcheck: "false" });
    const partial = h("input", { id: "catalog-partial", type: "checkbox", checked: catalogImport.partial });
    const charset = h("select", { id: "catalog-charset" },
      CATALOG_CHARSETS.map(([value, label]) => h("option", { value, selected: value === catalogImport.charset }, label)));
    const command = h("code", { class: "command-text", id: "catalog-command" },
      catalogImportCommand(catalogImport.partial, catalogImport.charset));
    const submit = h("button", { type: "submit", class: "button-primary", id: "catalog-submit" }, "Import");
    const update = () => {
      command.textContent = catalogImportCommand(partial.checked, charset.value);
      submit.disabled = !file.files.length || !(adminCredential || credential.value.trim());
    };
    for (const input of [file, credential, partial, charset]) { input.addEventListener("input", update); input.addEventListener("change", update); }
    const form = h("form", { class: "card import-form", id: "catalog-import" },
      h("label", { for: "catalog-file" }, "CSV file: barcode, sku and optionally pack_size, description"), file,
      h("label", { for: "catalog-charset" }, "Saved in"), charset,
      h("label", { class: "check" }, partial, " Import the good rows and list the refused ones (unticked: nothing is imported if one row is refused)"),
      adminCredential ? h("p", { class: "muted", id: "catalog-credential-kept" }, "Using the admin credential you gave in this tab.")
        : [h("label", { for: "catalog-credential" }, "Admin credential"), credential,
          h("p", { class: "hint" }, "The dashboard's own session only reads, so an import needs an admin credential. " +
            "It is kept in this tab's memory only, until you reload or sign out.")],
      h("div", { class: "toolbar" }, submit),
      h("details", { class: "command" }, h("summary", {}, "Or run this command as an admin"), command));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const token = adminCredential || credential.value.trim();
      submit.disabled = true;
      catalogImport.partial = partial.checked;
      catalogImport.charset = charset.value;
      try {
        await importCatalog(token, file.files[0], partial.checked, charset.value);
        adminCredential = token;
      } catch (err) {
        if (err.status === 401 || err.status === 403) adminCredential = null;
        else if (err.status) adminCredential = token; // the hub took the credential and refused the file
      }
      render();
    });
    update();
    const r = catalogImport.result;
    const outcome = [];
    if (r) {
      const refused = r.refused_count;
      outcome.push(h("p", { class: refused ? "warn-note" : "done-note", id: "catalog-result", role: "status" },
        `Imported ${NUM.format(r.imported)} of ${NUM.format(r.rows)} rows of ${r.name}: ${NUM.format(r.updated)} new or changed, ` +
        `${NUM.format(r.rebooked)} scan(s) of unknown barcodes re-booked, catalog version ${NUM.format(r.version)}.` +
        (refused ? ` ${NUM.format(refused)} row(s) refused: fix them in the refused rows' file and import that file.` : "")));
      if (refused) {
        outcome.push(h("div", { class: "section" }, h("div", { class: "section-head" }, h("h2", {}, "Refused rows"),
          h("a", { class: "button-secondary", id: "catalog-refused-csv", href: catalogImport.refusedUrl,
            download: r.name.replace(/\.(csv|txt)$/i, "") + ".refused.csv" }, "Download the refused rows (CSV)")),
        refusedTable(r.refused)));
      }
    }
    if (catalogImport.error) {
      outcome.push(h("p", { class: "form-error", id: "catalog-error", role: "alert" }, catalogImport.error));
      if (catalogImport.problems.length) outcome.push(refusedTable(catalogImport.problems));
    }
    return [h("div", { class: "view-head" }, h("div", {}, h("h1", {}, "Catalog"),
      h("p", { class: "muted", id: "catalog-size" }, `${NUM.format(state.skus.length)} SKU(s) known by barcode. ` +
        "Import a CSV file to add or change barcodes; rows not in the file stay as they are.")),
      h("div", { class: "toolbar downloads" }, csvLink("/v1/catalog?format=csv", "Download the catalog (CSV)",
        "every barcode, in the columns an import takes back"))),
    form, ...outcome];
  }

  async function importCatalog(token, file, partial, charset) {
    catalogImport.result = null;
    catalogImport.error = null;
    catalogImport.problems = [];
    if (catalogImport.refusedUrl) URL.revokeObjectURL(catalogImport.refusedUrl);
    catalogImport.refusedUrl = null;
    let response;
    try {
      response = await fetch("/v1/catalog" + (partial ? "?partial=true" : ""), { method: "PUT", credentials: "omit",
        body: await file.arrayBuffer(),
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "text/csv" + (charset ? `; charset=${charset}` : ""),
          Accept: "application/json" } });
    } catch (err) {
      catalogImport.error = "Not imported: the hub cannot be reached; try again.";
      throw Object.assign(new Error(catalogImport.error), { status: 0 });
    }
    let answer = null;
    try { answer = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const why = answer && answer.detail ? answer.detail : `HTTP ${response.status}`;
      catalogImport.error = response.status === 413
        ? `Not imported: ${why}. Import a file this large with: shelfsync-hub catalog import FILE.csv --hub ${window.location.origin}`
        : `Not imported: ${why}`;
      catalogImport.problems = answer && Array.isArray(answer.problems) ? answer.problems : [];
      throw Object.assign(new Error(catalogImport.error), { status: response.status });
    }
    catalogImport.result = Object.assign({ name: file.name }, answer);
    if (answer.refused_count) {
      catalogImport.refusedUrl = URL.createObjectURL(new Blob([answer.refused_csv], { type: "text/csv" }));
    }
    await loadCatalog(true).catch(() => {});
  }

  // --- channels: where each sales channel stands (GET /v1/channels) ----------------------------------------
  // Read with the status (for the tab's badge) and, while channels are configured, every CHANNELS_REFRESH_MS:
  // a channel can go down, catch up or be throttled with no change on the feed. The page is drawn again only
  // when the answer changed; the lists a person opened stay open.

  const CHANNELS_REFRESH_MS = 5000;
  const DIVERGENCE_PAGE = 20; // divergences per page of a channel's list
  const CHANNEL_KINDS = { shopify: "Shopify", square: "Square", webhook: "Webhook" };
  const channels = {
    list: null, // the last answer's channels (null: not read yet)
    text: "", // the last answer as sent, to see whether anything changed
    at: 0,
    timer: null,
    open: new Map(), // "name|part" -> open (a list a person opened or closed)
    pages: new Map(), // channel name -> {cursors, page, next}: where its divergence list is
    scrolled: null, // the channel of #/channels/<name> the page last scrolled to
  };

  async function loadChannels() {
    clearTimeout(channels.timer);
    channels.timer = null;
    try {
      const response = await pageFetch("/v1/channels", { cache: "no-store", headers: { Accept: "application/json" } });
      if (!response.ok) {
        let message = `HTTP ${response.status}`;
        try { message = (await response.json()).detail || message; } catch (_) { /* not JSON */ }
        throw new Error(`the channels cannot be read: ${message}`);
      }
      const text = await response.text();
      const changed = text !== channels.text;
      channels.list = JSON.parse(text).channels;
      channels.text = text;
      channels.at = Date.now();
      return changed;
    } finally {
      if (channels.list && channels.list.length) channels.timer = setTimeout(pollChannels, CHANNELS_REFRESH_MS);
    }
  }

  async function pollChannels() {
    let changed = false;
    try { changed = await loadChannels(); } catch (_) { /* the status refresh says when the hub cannot be reached */ }
    renderStrip();
    if (changed && currentView().name === "channels") render();
  }

  function channelsNeedingAttention() {
    return (channels.list || []).filter((c) => c.connected === false || c.divergences_open > 0);
  }

  function msText(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return `${NUM.format(ms)} ms`;
    if (ms < 120000) return `${ONE_DECIMAL.format(ms / 1000)} s`;
    return `${NUM.format(Math.round(ms / 60000))} min`;
  }

  function everyText(s) {
    return s % 3600 === 0 ? `every ${NUM.format(s / 3600)} h` : s % 60 === 0 ? `every ${NUM.format(s / 60)} min`
      : `every ${NUM.format(s)} s`;
  }

  function plural(n, one, many) {
    return `${fmt(n)} ${n === 1 ? one : many || one + "s"}`;
  }

  function connectionPill(c) {
    if (c.connected === true) return pill("Connected", "good");
    if (c.connected === false) return pill("Disconnected", "bad");
    return pill("No call yet", "plain");
  }

  function fact(label, field, value, ...notes) {
    return h("div", { class: "fact", dataset: { field } }, h("dt", {}, label),
      h("dd", {}, value, notes.filter((n) => n !== null && n !== undefined && n !== false).map((n) => h("span", { class: "sub" }, n))));
  }

  function throttleFact(c) {
    const t = c.throttle;
    if (t && t.maximum_available !== undefined) { // Shopify: its cost bucket, as its last answer said
      const left = Math.floor(t.currently_available);
      const low = left < t.maximum_available / 10;
      const filled = h("span", { class: "meter-fill" + (low ? " low" : "") });
      filled.style.width = `${Math.max(0, Math.min(100, (100 * left) / t.maximum_available))}%`; // CSSOM: allowed by the CSP
      return fact("Throttle", "throttle",
        h("span", { class: low ? "warn-text" : null }, `${fmt(left)} / ${fmt(t.maximum_available)} points available`),
        h("span", { class: "meter", role: "presentation" }, filled),
        `restores ${fmt(t.restore_rate)} points/s`, t.at_ms ? h("span", {}, "as of ", ageEl(t.at_ms)) : null);
    }
    if (t && t.retry_after_s !== undefined) { // Square or a webhook: a 429's Retry-After still in force
      return fact("Throttle", "throttle", h("span", { class: "warn-text" }, `Retry-After ${NUM.format(t.retry_after_s)} s in force`),
        h("span", {}, "until ", timeEl(t.until)));
    }
    return fact("Throttle", "throttle", c.kind === "shopify" ? "not reported yet" : "none in force",
      c.kind === "shopify" ? "Shopify reports its points with each answer" : "no 429 Retry-After waiting");
  }

  function reconciliationFact(c) {
    const r = c.last_reconciliation;
    if (!c.reconcile_s) {
      return fact("Last reconciliation", "reconciliation", r ? ageEl(r.at_ms) : "never",
        c.kind === "webhook" ? "a webhook channel cannot be read back" : "only when an admin asks (reconcile_s = 0)");
    }
    return fact("Last reconciliation", "reconciliation", r ? ageEl(r.at_ms) : "not yet",
      r ? timeEl(r.at) : null, r ? `${plural(r.checked, "level")} checked, ${fmt(r.diverged)} diverged` : null,
      everyText(c.reconcile_s));
  }

  function skuList(skus) {
    return h("ul", { class: "sku-list" }, skus.map((sku) => h("li", { dataset: { sku } }, skuWithName(sku))));
  }

  // A list a person can open and close (unmapped SKUs, divergences): kept open or closed across redraws. The
  // wish is kept at the click itself: the toggle event comes a task later, and a redraw in between (the page
  // follows the feed live) would draw the list as it was and lose the click.
  function collapsible(c, part, summary, fill) {
    const key = `${c.name}|${part}`;
    const open = channels.open.get(key) || false;
    const slot = h("div", { class: "collapsible-body" });
    const filled = () => fill(slot).catch((err) => slot.replaceChildren(h("p", { class: "form-error" }, err.message)));
    const el = h("details", { class: "channel-part", dataset: { part }, open: open || null,
      ontoggle: () => {
        channels.open.set(key, el.open);
        if (el.open && !slot.childElementCount) filled();
      } }, h("summary", { onclick: () => channels.open.set(key, !el.open) }, summary), slot);
    return { el, open, fill: filled };
  }

  function divergenceRow(d) {
    const diff = d.channel_level - d.hub_level;
    return h("tr", { dataset: { divergence: String(d.id), open: String(d.corrected_at_ms === null) } },
      h("td", { class: "nowrap" }, skuWithName(d.sku), h("span", { class: "sub mono", title: "the channel's item" }, d.item_id)),
      h("td", { class: "nowrap" }, h("span", { class: "mono" }, d.channel_location),
        h("span", { class: "sub" }, d.location ? `fed by ${d.location}` : "fed by several hub locations")),
      numCell(d.hub_level, { field: "hub_level" }),
      numCell(d.last_pushed, { field: "last_pushed" }),
      h("td", { class: "num", dataset: { field: "channel_level" } }, fmt(d.channel_level),
        h("span", { class: "sub" + (diff < 0 ? " neg" : "") }, `${signed(diff)} vs the hub`)),
      timeEl(d.found_at, "td", { class: "nowrap time", dataset: { field: "found_at" } }),
      d.corrected_at ? timeEl(d.corrected_at, "td", { class: "nowrap time", dataset: { field: "corrected_at" } })
        : h("td", { class: "nowrap", dataset: { field: "corrected_at" } }, pill("Open", "warn")));
  }

  // One page of a channel's divergences, newest first, walked with the API's cursors as the ledger is.
  async function divergencePage(c, slot) {
    if (!channels.pages.has(c.name)) channels.pages.set(c.name, { cursors: [null], page: 0, next: null });
    const p = channels.pages.get(c.name);
    const cursor = p.cursors[p.page];
    const body = await api(`/v1/channels/${encodeURIComponent(c.name)}/divergences?limit=${DIVERGENCE_PAGE}` +
      (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
    p.next = body.next;
    const go = (page) => async () => {
      if (page > p.page) p.cursors[page] = p.next;
      p.page = page;
      await divergencePage(c, slot);
    };
    const first = p.page * DIVERGENCE_PAGE + 1;
    slot.replaceChildren(
      table(["Item", "Channel location", ["Hub level", "num"], ["Last pushed", "num"], ["Channel level", "num"], "Found at",
        "Corrected at"], body.divergences.map(divergenceRow),
      p.page ? "Nothing on this page." : "Reconciliation has found no divergence at this channel."),
      h("div", { class: "pager" },
        h("button", { type: "button", class: "button-secondary divergences-newer", disabled: p.page === 0, onclick: go(p.page - 1) }, "← Newer"),
        h("span", { class: "muted divergences-page" }, body.divergences.length
          ? `Page ${NUM.format(p.page + 1)} · divergences ${NUM.format(first)}–${NUM.format(first + body.divergences.length - 1)}`
          : `Page ${NUM.format(p.page + 1)}`),
        h("button", { type: "button", class: "button-secondary divergences-older", disabled: !p.next, onclick: go(p.page + 1) }, "Older →")));
  }

  async function channelCard(c) {
    const down = c.connected === false;
    const head = h("div", { class: "channel-head" },
      h("h2", {}, c.name), h("span", { class: "pill plain accent" }, CHANNEL_KINDS[c.kind] || c.kind), connectionPill(c),
      h("span", { class: "channel-call muted" }, c.last_call_ms ? ["last call ", ageEl(c.last_call_ms)] : "no call yet"));
    const errors = [];
    if (c.last_error) {
      errors.push(h("p", { class: "channel-error", dataset: { field: "last_error" } }, c.last_error,
        c.failures > 1 ? h("span", { class: "sub" }, `${NUM.format(c.failures)} failed attempts in a row; the hub keeps trying, backing off`) : null));
    }
    if (c.reconcile_error) {
      errors.push(h("p", { class: "channel-error warn", dataset: { field: "reconcile_error" } },
        `Reading the levels back failed: ${c.reconcile_error}`));
    }
    const lag = c.lag.samples
      ? [h("span", { class: "nowrap" }, `p50 ${msText(c.lag.p50_ms)}`), " · ", h("span", { class: "nowrap" }, `p99 ${msText(c.lag.p99_ms)}`)]
      : "no push measured yet";
    const openHere = c.divergences_open > 0;
    const facts = h("dl", { class: "facts" },
      fact("Last push", "last_push", ageEl(c.last_push_ms), c.last_push ? timeEl(c.last_push) : "nothing confirmed since the hub started"),
      fact("Lag, store → channel", "lag", lag,
        c.lag.samples ? `last ${msText(c.lag.last_ms)} · ${plural(c.lag.samples, "push", "pushes")} measured` : null),
      fact("Queue", "queue", h("span", { class: c.queue && down ? "warn-text" : null }, c.queue ? plural(c.queue, "change") + " waiting" : "none waiting"),
        `feed cursor ${c.cursor}`),
      throttleFact(c),
      fact("Divergences open", "divergences_open", h("span", { class: openHere ? "warn-text" : null }, fmt(c.divergences_open)),
        h("a", { href: `#/channels/${encodeURIComponent(c.name)}`, class: "show-divergences", onclick: (e) => {
          const details = e.target.closest(".channel").querySelector('details[data-part="divergences"]');
          if (!details) return;
          e.preventDefault();
          details.open = true;
          details.scrollIntoView({ block: "nearest" });
        } }, "show the list")),
      fact("Refused levels", "refused", h("span", { class: c.refused ? "warn-text" : null }, fmt(c.refused)),
        c.refused ? h("a", { href: "#/exceptions/channel_refused" }, "why: see Exceptions") : "the channel took every level"),
      fact("Mapped SKUs", "mapped", fmt(c.mapped), c.findings ? plural(c.findings, "mapping finding") : null),
      reconciliationFact(c));
    const unmapped = c.unmapped.count
      ? collapsible(c, "unmapped", [h("span", { class: "warn-text" }, plural(c.unmapped.count, "unmapped SKU")),
        h("span", { class: "muted" }, " with stock in the pool: not pushed")], async (slot) => {
        const more = c.unmapped.count - c.unmapped.skus.length;
        slot.replaceChildren(skuList(c.unmapped.skus),
          ...(more > 0 ? [h("p", { class: "muted" }, `and ${NUM.format(more)} more not listed`)] : []),
          h("p", { class: "hint" }, "No item of the channel carries these SKUs. Add them at the channel (or to its mapping CSV), then " +
            "refresh the mapping as an admin: ", h("code", {}, `POST /v1/channels/${c.name}/mapping/refresh`), "."));
      })
      : null;
    const divergences = collapsible(c, "divergences", [h("span", {}, "Divergences"),
      h("span", { class: "muted" }, openHere ? ` — ${fmt(c.divergences_open)} open` : " — none open")],
    (slot) => divergencePage(c, slot));
    for (const part of [unmapped, divergences]) if (part && part.open) await part.fill(); // drawn whole, then shown
    return h("section", { class: "card channel", id: `channel-${c.name}`, dataset: { channel: c.name, state: down ? "down" : c.connected ? "up" : "unknown" } },
      head, ...errors, facts, unmapped ? unmapped.el : null, divergences.el);
  }

  async function channelsView(focus) {
    if (!state.status) await refreshStatus();
    if (!channels.list || Date.now() - channels.at > 1000) await loadChannels();
    const list = channels.list;
    const head = h("div", { class: "view-head" }, h("div", {}, h("h1", {}, "Channels"),
      h("p", { class: "muted" }, "Each sales channel the hub pushes its levels to: whether the channel's API answers, when it last " +
        "confirmed a level, how long a movement at a store takes to reach it, what waits, how hard it throttles, and what " +
        "reconciliation found drifting there. Updated every few seconds.")));
    if (!list.length) {
      return [head, h("div", { class: "card empty", id: "channels-empty" }, "No channel is configured: add a ",
        h("code", {}, "[[channel]]"), " table to the hub's config — see docs/channels.md")];
    }
    const arrived = focus && channels.scrolled !== focus; // #/channels/<name> just opened: show its divergences
    if (arrived) channels.open.set(`${focus}|divergences`, true);
    const cards = await Promise.all(list.map(channelCard));
    if (!focus) channels.scrolled = null;
    else if (arrived) {
      channels.scrolled = focus;
      setTimeout(() => { const el = $(`channel-${focus}`); if (el) el.scrollIntoView({ block: "start" }); }, 0);
    }
    return [head, h("div", { class: "channels" }, cards)];
  }

  // The navigation's pages, in order. view: the #/view address; render(arg): the page's elements; arg(rest):
  // reads the address after #/view/ (optional); live: redrawn when the status refreshes; badge(): the count
  // shown on the tab (optional).
  const PAGES = [
    { view: "overview", label: "Stores", render: overview, live: true, arg: (rest) => (rest === "offline" ? rest : "") },
    { view: "stock", label: "Stock", render: stock },
    { view: "exceptions", label: "Exceptions", render: exceptionsView, live: true, arg: (rest) => rest,
      badge: () => state.exceptions.length },
    { view: "quarantine", label: "Quarantine", render: quarantineView, live: true,
      arg: (rest) => (QUARANTINE_STATUSES.includes(rest) ? rest : "pending"),
      badge: () => state.exceptions.filter((e) => e.kind === "clock_quarantine").length }, // one per held event
    { view: "variance", label: "Shrinkage", render: varianceView },
    { view: "catalog", label: "Catalog", render: catalogView },
    { view: "channels", label: "Channels", render: channelsView, live: true, arg: (rest) => rest,
      badge: () => channelsNeedingAttention().length }, // channels disconnected or with divergences open
  ];

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

  // A stream opened here begins at the newest change. The browser's own reconnects resume where the stream
  // left off (Last-Event-ID), but a stream that was refused (the hub restarting, or its database restored: 410)
  // is opened anew, so whatever changed meanwhile is read again with the page.
  function connectFeed() {
    if (leaving.signal.aborted) return;
    const reopened = state.started;
    let opened = false;
    const source = new EventSource("/v1/changes/stream");
    feed = source;
    source.addEventListener("ready", (e) => {
      setLive("live", "Live");
      const cursor = JSON.parse(e.data).cursor;
      if (state.cursor === null || (reopened && !opened)) state.cursor = cursor;
      if (!state.started || (reopened && !opened)) {
        state.started = true;
        refreshStatus().then(render, () => render());
      }
      opened = true;
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
    buildNav();
    const zone = zoneOf(new Date());
    $("time-zone").textContent = `Times are in your browser's time zone, ${TIME_ZONE ? `${TIME_ZONE} (${zone})` : zone}; ` +
      "hover over a time to see it in UTC.";
    $("find-sku").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("find-sku-input").value.trim();
      if (value) window.location.hash = "#/sku/" + encodeURIComponent(value);
    });
    window.addEventListener("hashchange", render);
    document.querySelector('form[action="/dashboard/sign-out"]').addEventListener("submit", leave);
    connectFeed();
    setInterval(tickAges, AGE_TICK_MS);
    setInterval(() => refreshStatus().catch(() => {}), STATUS_REFRESH_MS);
  });
})();
