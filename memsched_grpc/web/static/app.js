// memsched dashboard: one EventSource per selected cube; the server pushes the overview, the cube's state,
// handler latency and its log items (replayed history first). Nothing here polls.
"use strict";
(() => {
  const MAX_LOGS = 1000;       // log items kept in the page (the fill graph and the filter work on these)
  const FEED_ROWS = 300;       // rows drawn in the live log
  const RETRY_MS = 3000;       // after the server refused or closed the stream for good
  const KNOWN_LABELS = ["addMessage", "addMemory", "updateMemory", "scheduleMemory", "mergeMemory",
    "archiveMemory", "knowledgeBaseUpdate", "taskStatus"];
  const TYPE_COLOURS = { WorkingMemory: "#e8891c", LongTermMemory: "#3868d8", UserMemory: "#2a9d62",
    ActivationMemory: "#8a4fd0" };
  const LABEL_COLOURS = { query: "#e8891c", answer: "#2a9d62", add: "#3868d8" };
  const PALETTE = ["#8a4fd0", "#d0413b", "#17707a", "#a35d00", "#6b7385", "#2f4fb0"];
  const SHORT = { WorkingMemory: "Working", LongTermMemory: "LongTerm", UserMemory: "User",
    ActivationMemory: "Activation", UserInput: "UserInput", TextMemory: "Text", NotApplicable: "—" };

  const state = {
    token: "", user: "", cube: "", source: null, retry: null,
    overview: null, activation: false,
    logs: [], logIds: new Set(), messages: new Map(),
    latency: [], filter: new Set(), working: new Set(),
    fillChart: null, fillKey: "", latencyChart: null, latencyKey: "",
  };

  const $ = (id) => document.getElementById(id);

  // h("td", {class: "x", title: "y"}, child, "text", ...): builds DOM with textContent only (no HTML injection).
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "style") el.style.cssText = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const fmt = new Intl.NumberFormat("en");
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  function clock(t) {
    const d = new Date(t * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }
  function since(t) {
    const s = Math.max(0, Date.now() / 1000 - t);
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  // ---- location: #user_id=..&mem_cube_id=..&token=.. (the token moves to sessionStorage at once)
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.get("token")) sessionStorage.setItem("memsched-token", params.get("token"));
    state.token = sessionStorage.getItem("memsched-token") || "";
    state.user = params.get("user_id") || "";
    state.cube = params.get("mem_cube_id") || "";
    writeHash();
  }
  function writeHash() {
    const params = state.user ? new URLSearchParams({ user_id: state.user, mem_cube_id: state.cube }) : "";
    history.replaceState(null, "", params ? `#${params}` : location.pathname);
  }

  // ---- the stream
  function setConnection(kind, text) {
    const el = $("connection");
    el.dataset.state = kind;
    el.querySelector(".text").textContent = text || kind;
  }

  function connect() {
    clearTimeout(state.retry);
    if (state.source) state.source.close();
    const query = new URLSearchParams();
    if (state.user) {
      query.set("user_id", state.user);
      query.set("mem_cube_id", state.cube);
    }
    if (state.token) query.set("token", state.token);
    const source = new EventSource(`/api/events?${query}`);
    state.source = source;
    setConnection("connecting");
    source.onopen = () => setConnection("live");
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) {
        setConnection("connecting", "reconnecting");
        return;
      }
      // Refused (401/403/503) or gone: ask once why, show it, and try again later.
      fetch(`/api/overview`, { headers: state.token ? { Authorization: `Bearer ${state.token}` } : {} })
        .then((r) => (r.ok ? null : r.json()))
        .then((body) => setConnection("error", body && body.error ? body.error : "disconnected"))
        .catch(() => setConnection("error", "server unreachable"));
      state.retry = setTimeout(connect, RETRY_MS);
    };
    const on = (name, fn) => source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
    on("overview", onOverview);
    on("cube", renderCube);
    on("logs", onLogs);
    on("latency", onLatency);
    on("overflow", () => setConnection("connecting", "catching up"));
  }

  function select(user, cube) {
    if (user === state.user && cube === state.cube) return;
    Object.assign(state, { user, cube, logs: [], logIds: new Set(), messages: new Map(), latency: [],
      working: new Set() });
    writeHash();
    renderFeed(new Set());
    renderFill();
    renderLatency();
    connect();
    if (state.overview) renderCubes();
  }

  // ---- overview: server line and the users/cubes list
  function onOverview(overview) {
    state.overview = overview;
    if (state.activation !== overview.server.activation) {
      state.activation = overview.server.activation;
      renderFill();
    }
    const s = overview.server;
    $("server").replaceChildren(
      "v", h("b", {}, s.version), " · backlog ", h("b", {}, fmt.format(s.backlog)),
      " · ", h("b", {}, s.workers), " workers · up ", h("b", {}, since(s.started_at)),
      s.accepting ? "" : " · shutting down");
    renderCubes();
    if (!state.user && overview.cubes.length) select(overview.cubes[0].user_id, overview.cubes[0].mem_cube_id);
  }

  function renderCubes() {
    const cubes = state.overview.cubes;
    const box = $("cubes");
    if (!cubes.length) {
      box.replaceChildren(h("p", { class: "empty" }, "No cube yet: submit a message over gRPC."));
      return;
    }
    const users = new Map();
    for (const c of cubes) {
      if (!users.has(c.user_id)) users.set(c.user_id, []);
      users.get(c.user_id).push(c);
    }
    const groups = [];
    for (const [user, list] of users) {
      groups.push(h("div", { class: "user" },
        h("div", { class: "user-name" }, `user ${user}`),
        list.map((c) => {
          const selected = c.user_id === state.user && c.mem_cube_id === state.cube;
          const fill = c.working_capacity ? Math.min(100, (100 * c.working) / c.working_capacity) : 0;
          return h("button", {
            class: selected ? "cube selected" : "cube", "data-user": c.user_id, "data-cube": c.mem_cube_id,
            onclick: () => select(c.user_id, c.mem_cube_id),
          },
          h("div", { class: "cube-line" },
            h("span", { class: "cube-name", title: c.mem_cube_id }, c.mem_cube_id),
            h("span", { class: c.pending ? "badge busy" : "badge" }, c.pending ? `${fmt.format(c.pending)} queued` : "idle")),
          h("div", { class: "cube-counts" },
            h("span", { title: "handled since the server started" }, `✓ ${fmt.format(c.completed)}`),
            c.failed ? h("span", { class: "failed", title: "failed since the server started" }, `✗ ${fmt.format(c.failed)}`) : null,
            h("span", { title: "WorkingMemory" }, `WM ${c.working}/${c.working_capacity}`),
            h("span", { title: "LongTermMemory" }, `LTM ${fmt.format(c.long_term)}`),
            h("span", { title: "UserMemory" }, `UM ${fmt.format(c.user)}`)),
          h("div", { class: "minibar" }, h("span", { style: `width:${fill}%` })));
        })));
    }
    if (state.overview.truncated) groups.push(h("p", { class: "empty" }, "More cubes exist than are listed."));
    box.replaceChildren(...groups);
  }

  // ---- one cube
  function renderCube(c) {
    $("cube-title").replaceChildren(h("span", { class: "dim" }, `${c.user_id} / `), c.mem_cube_id);
    $("cube-stats").replaceChildren(
      h("b", {}, fmt.format(c.queries)), " queries · ", h("b", {}, fmt.format(c.answers)), " answers · ",
      h("b", {}, fmt.format(c.pending)), " queued · ", h("b", {}, fmt.format(c.archived)), " archived");
    $("partitions").replaceChildren(...c.partitions.map((p) => {
      const pct = p.capacity > 0 ? Math.min(100, (100 * p.size) / p.capacity) : 0;
      return h("div", { class: `card partition t-${p.type}`, "data-type": p.type },
        h("div", { class: "name" }, p.type),
        h("div", { class: "size" }, fmt.format(p.size), h("span", { class: "cap" },
          p.capacity > 0 ? ` / ${fmt.format(p.capacity)}` : " (no limit)")),
        h("div", { class: "bar", title: `${pct.toFixed(1)} % full` }, h("span", { style: `width:${pct}%` })));
    }));

    const fresh = new Set(c.working.map((w) => w.id).filter((id) => state.working.size && !state.working.has(id)));
    state.working = new Set(c.working.map((w) => w.id));
    $("working-count").textContent = `${c.working.length} items`;
    const rows = c.working.map((w) => h("tr", { class: fresh.has(w.id) ? "fresh" : null, "data-id": w.id },
      h("td", { class: "num" }, w.rank),
      h("td", {}, w.key && !w.memory.startsWith(w.key) ? h("span", { class: "mem-key" }, `${w.key}: `) : null,
        h("span", { class: "mem-text" }, w.memory)),
      h("td", {}, h("span", { class: `type ${w.source}` }, SHORT[w.source] || w.source)),
      h("td", { class: "num" }, h("div", { class: "score" }, w.importance.toFixed(3),
        h("div", { class: "track" }, h("span", { style: `width:${Math.min(100, w.importance * 100)}%` })))),
      h("td", { class: "num" }, w.relevance.toFixed(3)),
      h("td", { class: "num" }, w.keyword_score.toFixed(3)),
      h("td", { class: "num" }, w.usage_count)));
    $("working").tBodies[0].replaceChildren(...(rows.length ? rows
      : [h("tr", {}, h("td", { colspan: 7, class: "empty" }, "Working memory is empty."))]));

    $("query-window").replaceChildren(...(c.query_window.length
      ? c.query_window.map((q) => h("li", {}, q))
      : [h("li", { class: "empty" }, "No query yet.")]));
    $("keywords").replaceChildren(...(c.keywords.length
      ? c.keywords.map(([word, n]) => h("span", { class: "keyword" }, word, h("b", {}, n)))
      : [h("span", { class: "empty" }, "No keywords yet.")]));
    $("activation").hidden = !state.activation;
    $("activation-text").textContent = c.activation_text || "(not built yet)";
  }

  // ---- live log
  function onLogs(message) {
    const fresh = new Set();
    if (message.replay) {
      state.logs = [];
      state.logIds = new Set();
      state.messages = new Map();
    }
    for (const item of message.items) {
      if (state.logIds.has(item.id)) continue;
      state.logIds.add(item.id);
      state.logs.push(item);
      if (!message.replay) fresh.add(item.id);
      if (item.label === "addMessage") state.messages.set(item.source, item.content);
    }
    if (state.logs.length > MAX_LOGS) {
      for (const old of state.logs.splice(0, state.logs.length - MAX_LOGS)) state.logIds.delete(old.id);
    }
    renderFeed(fresh);
    renderFill();
  }

  function renderFeed(fresh) {
    const counts = new Map();
    for (const item of state.logs) counts.set(item.label, (counts.get(item.label) || 0) + 1);
    const labels = [...KNOWN_LABELS.filter((l) => counts.has(l)), ...[...counts.keys()].filter((l) => !KNOWN_LABELS.includes(l))];
    $("label-filter").replaceChildren(
      h("button", { class: "chip", "aria-pressed": String(!state.filter.size), onclick: () => toggle(null) }, "all"),
      ...labels.map((label) => h("button", {
        class: "chip", "data-label": label, "aria-pressed": String(state.filter.has(label)), onclick: () => toggle(label),
      }, label, h("span", { class: "n" }, counts.get(label)))));

    const shown = [];
    for (let i = state.logs.length - 1; i >= 0 && shown.length < FEED_ROWS; i--) {
      const item = state.logs[i];
      if (!state.filter.size || state.filter.has(item.label)) shown.push(item);
    }
    $("feed-count").textContent = `${shown.length} of ${state.logs.length} items`;
    const rows = shown.map((item) => {
      const text = state.messages.get(item.source);
      return h("tr", { class: [fresh.has(item.id) ? "fresh" : "", item.status === "failed" ? "failed" : ""].join(" ").trim() || null,
        "data-label": item.label, "data-id": item.id },
      h("td", { class: "time", title: new Date(item.t * 1000).toISOString() }, clock(item.t)),
      h("td", {}, h("span", { class: `label ${item.label}` }, item.label)),
      h("td", { class: "move" }, item.from === "NotApplicable" && item.to === "NotApplicable" ? "—" : [
        h("span", { class: `type ${item.from}` }, SHORT[item.from] || item.from),
        h("span", { class: "arrow" }, "→"),
        h("span", { class: `type ${item.to}` }, SHORT[item.to] || item.to)]),
      h("td", { class: "content" }, item.content),
      h("td", { class: "cause", title: `message ${item.source}${item.task_id ? `, task ${item.task_id}` : ""}` },
        h("span", { class: "what" }, item.cause || "message"), " ",
        text && item.label !== "addMessage" ? `“${text.replace(/^\[(User|Assistant)\] /, "")}”` : item.source.slice(0, 8)));
    });
    $("feed").tBodies[0].replaceChildren(...(rows.length ? rows
      : [h("tr", {}, h("td", { colspan: 5, class: "empty" }, "Nothing logged yet."))]));
  }

  function toggle(label) {
    if (label === null) state.filter.clear();
    else if (state.filter.has(label)) state.filter.delete(label);
    else state.filter.add(label);
    renderFeed(new Set());
  }

  // ---- graphs (uPlot, vendored)
  // Legend values: under the cursor, the value there; otherwise the latest one.
  function legendValue(format) {
    return (u, v, series, idx) => {
      if (idx == null) {
        const values = u.data[series] || [];
        for (let i = values.length - 1; i >= 0 && v == null; i--) v = values[i];
      }
      return v == null ? "—" : format(v);
    };
  }

  function chartWidth(el) {
    return Math.max(280, el.clientWidth);
  }

  function renderFill() {
    const el = $("fill-chart");
    const types = ["WorkingMemory", "LongTermMemory", "UserMemory"].concat(state.activation ? ["ActivationMemory"] : []);
    const last = state.logs.length ? state.logs[state.logs.length - 1].fill : null;
    const cap = (type) => (last && last[type] ? last[type][1] : 0);
    const data = [state.logs.map((l) => l.t)];
    for (const type of types) data.push(state.logs.map((l) => (l.fill[type] ? l.fill[type][0] : null)));
    const key = `${types.join()}|${cap("WorkingMemory")}`;
    if (!state.fillChart || state.fillKey !== key) {
      if (state.fillChart) state.fillChart.destroy();
      const small = new Set(["WorkingMemory", "ActivationMemory"]);
      state.fillKey = key;
      state.fillChart = new uPlot({
        width: chartWidth(el), height: 220,
        scales: { x: { time: true }, wm: { range: [0, Math.max(1, cap("WorkingMemory"))] },
          mem: { range: (u, min, max) => [0, Math.max(10, Math.ceil((max || 0) * 1.15))] } },
        series: [{ value: legendValue(clock) }, ...types.map((type) => ({
          label: SHORT[type], scale: small.has(type) ? "wm" : "mem", stroke: TYPE_COLOURS[type], width: 2,
          fill: type === "WorkingMemory" ? "rgba(232,137,28,0.10)" : undefined,
          paths: uPlot.paths.stepped({ align: 1 }), points: { show: false },
          value: legendValue((v) => `${fmt.format(v)} / ${fmt.format(cap(type))}`),
        }))],
        axes: [{}, { scale: "wm", label: `Working (of ${cap("WorkingMemory") || "?"})`, stroke: TYPE_COLOURS.WorkingMemory },
          { scale: "mem", side: 1, label: "LongTerm · User", grid: { show: false } }],
      }, data, el);
    } else {
      state.fillChart.setData(data);
    }
  }

  function onLatency(message) {
    state.latency = message.replace ? message.items : state.latency.concat(message.items).slice(-2000);
    renderLatency();
  }

  function renderLatency() {
    const el = $("latency-chart");
    const labels = [...new Set(state.latency.map((s) => s.label))].sort();
    const data = [state.latency.map((s) => s.t)];
    for (const label of labels) data.push(state.latency.map((s) => (s.label === label ? s.ms : null)));
    const key = labels.join();
    if (!state.latencyChart || state.latencyKey !== key) {
      if (state.latencyChart) state.latencyChart.destroy();
      state.latencyKey = key;
      state.latencyChart = new uPlot({
        width: chartWidth(el), height: 220,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)] } },
        series: [{ value: legendValue(clock) }, ...labels.map((label, i) => ({
          label, stroke: LABEL_COLOURS[label] || PALETTE[i % PALETTE.length], paths: () => null,
          points: { show: true, size: 7, fill: LABEL_COLOURS[label] || PALETTE[i % PALETTE.length] },
          value: legendValue((v) => `${v.toFixed(1)} ms`),
        }))],
        axes: [{}, { label: "ms", values: (u, vals) => vals.map((v) => fmt.format(v)) }],
      }, data, el);
    } else {
      state.latencyChart.setData(data);
    }
  }

  window.addEventListener("resize", () => {
    for (const [chart, el] of [[state.fillChart, $("fill-chart")], [state.latencyChart, $("latency-chart")]]) {
      if (chart) chart.setSize({ width: chartWidth(el), height: 220 });
    }
  });

  readHash();
  renderFill();
  renderLatency();
  renderFeed(new Set());
  connect();
})();
