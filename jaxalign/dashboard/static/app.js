// jaxalign dashboard: draws the payload built by jaxalign/dashboard/payload.py with plotly.js.
// Live mode polls api/data (the server answers "unchanged" until the runs' files change);
// a report embeds the payload in the page's config and never polls.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("jaxalign-config").textContent);
  const live = !config.payload;
  const state = {
    payload: null, version: null, hidden: new Set(), smoothing: config.smoothing, tab: "charts",
    cards: new Map(), // figure id -> {el, plot, spec, dirty, visible}
    completions: {run: null, step: "latest", query: "", sortKey: null, sortDir: -1, rows: []},
    lastChange: null,
  };
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value; else if (key === "style") node.style.cssText = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  };

  // ------------------------------------------------------------------ smoothing
  // TensorBoard's debiased exponential moving average; jaxalign/dashboard/downsample.py `ema` is the same.
  function smoothed(values, weight) {
    if (!weight || !values || isConstant(values)) return values;
    const out = new Array(values.length);
    let last = 0, count = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || !Number.isFinite(v)) { out[i] = null; continue; }
      last = last * weight + (1 - weight) * v; count += 1;
      out[i] = last / (1 - Math.pow(weight, count));
    }
    return out;
  }

  // A constant curve stays exact (rounding in the average would make plotly zoom into noise).
  function isConstant(values) {
    let first = null;
    for (const v of values) { if (v === null || !Number.isFinite(v)) continue; if (first === null) first = v; else if (v !== first) return false; }
    return true;
  }

  function tracesToDraw(spec) {
    const weight = state.smoothing, out = [];
    let path = null;
    for (const trace of spec.figure.data) {
      const meta = trace.meta || {};
      if (meta.run !== undefined && state.hidden.has(meta.run)) continue;
      if (weight > 0 && meta.smooth === "y") {
        out.push({...trace, opacity: 0.22, hoverinfo: "skip", hovertemplate: null, showlegend: false});
        const base = meta.mean || trace; // downsampled curves carry bucket means to smooth
        out.push({...trace, x: base.x, y: smoothed(base.y, weight)});
      } else if (weight > 0 && meta.smooth === "xy") {
        path = {...trace, x: smoothed(trace.x, weight), y: smoothed(trace.y, weight)};
        out.push({...trace, mode: "lines", opacity: 0.18, hoverinfo: "skip", hovertemplate: null});
        out.push(path);
      } else if (weight > 0 && meta.smooth === "ends" && path) {
        const n = path.x.length - 1; // start and end markers sit on the smoothed path
        out.push({...trace, x: [path.x[0], path.x[n]], y: [path.y[0], path.y[n]]});
      } else {
        out.push(trace);
      }
    }
    return out;
  }

  // ------------------------------------------------------------------ charts
  const plotConfig = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"]};
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const card = state.cards.get(entry.target.dataset.id);
      if (!card) continue;
      card.visible = entry.isIntersecting;
      if (card.visible && card.dirty) schedule(card);
    }
  }, {rootMargin: "200px"});

  // Charts are drawn one per task, top first, so the first appears at once and the page
  // stays responsive while the rest follow.
  const queue = [];
  function schedule(card) {
    if (!queue.includes(card)) queue.push(card);
    if (queue.length === 1) setTimeout(drawNext, 0);
  }
  function drawNext() {
    const card = queue.shift();
    if (card && card.dirty && card.visible && state.cards.get(card.spec.id) === card) draw(card);
    if (queue.length) setTimeout(drawNext, 0);
  }

  function draw(card) {
    card.dirty = false;
    card.plot.style.height = "";
    const started = performance.now();
    Plotly.react(card.plot, tracesToDraw(card.spec), card.spec.figure.layout, plotConfig);
    card.el.dataset.drawMs = Math.round(performance.now() - started);
    if (!card.hooked) {
      card.hooked = true;
      card.plot.on("plotly_hover", (event) => shareCursor(card, event));
      card.plot.on("plotly_unhover", () => shareCursor(card, null));
    }
    card.el.dataset.drawn = String((card.el.dataset.drawn | 0) + 1);
  }

  // One cursor for every chart over steps: hovering one shows the same step on the others in view.
  let sharing = false;
  function shareCursor(source, event) {
    if (sharing || !isStepChart(source.spec)) return;
    sharing = true;
    try {
      for (const card of state.cards.values()) {
        if (card === source || !card.visible || card.dirty || !isStepChart(card.spec) || !card.plot.data) continue;
        if (event && event.xvals && event.xvals.length) Plotly.Fx.hover(card.plot, {xval: event.xvals[0]}, subplotsOf(card.spec));
        else Plotly.Fx.unhover(card.plot);
      }
    } finally { sharing = false; }
  }
  const isStepChart = (spec) => ((spec.figure.layout.xaxis || {}).title || {}).text === "step";
  const subplotsOf = (spec) => Object.keys(spec.figure.layout).filter((k) => /^yaxis\d*$/.test(k) && k !== "yaxis9")
    .map((k) => "x" + k.replace("axis", ""));

  function card(spec) {
    let entry = state.cards.get(spec.id);
    if (!entry) {
      // Sized as it will be drawn, so only the charts really in view are drawn first.
      const plot = el("div", {class: "plot", style: `height: ${spec.figure.layout.height || 300}px`});
      const title = el("h3", {}, spec.title);
      if (spec.help) title.append(el("span", {class: "help"}, spec.help));
      const node = el("div", {class: "card" + (spec.wide ? " wide" : ""), "data-id": spec.id}, title, plot);
      entry = {el: node, plot, spec, dirty: true, visible: false};
      state.cards.set(spec.id, entry);
      observer.observe(node);
    }
    entry.spec = spec;
    entry.dirty = true;
    if (entry.visible) schedule(entry);
    return entry.el;
  }

  function renderSections(container, sections) {
    const open = new Map([...container.querySelectorAll("details.section")].map((d) => [d.dataset.title, d.open]));
    const nodes = sections.map((section) => {
      const grid = el("div", {class: "grid " + (section.layout || "")}, ...section.figures.map(card));
      const details = el("details", {class: "section", "data-title": section.title},
        el("summary", {}, `${section.title}`), grid);
      details.open = open.has(section.title) ? open.get(section.title) : !section.collapsed;
      details.addEventListener("toggle", () => {
        for (const node of grid.children) { const c = state.cards.get(node.dataset.id); if (c && details.open && c.dirty && c.visible) schedule(c); }
      });
      return details;
    });
    const keep = new Set(sections.flatMap((s) => s.figures.map((f) => f.id)));
    for (const [id, entry] of state.cards) {
      if (!keep.has(id) && container.contains(entry.el)) { observer.unobserve(entry.el); Plotly.purge(entry.plot); state.cards.delete(id); }
    }
    container.replaceChildren(...nodes);
  }

  function redrawAll() { for (const c of state.cards.values()) { c.dirty = true; if (c.visible) schedule(c); } }

  // ------------------------------------------------------------------ runs header
  function renderRuns(runs) {
    $("runs").replaceChildren(...runs.map((run) => {
      const progress = run.step === null ? "no steps yet" : `step ${run.step}${run.max_steps ? " / " + run.max_steps : ""}`;
      const status = el("span", {class: "status " + run.status, title: run.message || run.status}, run.status);
      const chip = el("label", {class: "run-chip" + (state.hidden.has(run.id) ? " off" : ""), style: `--c: ${run.color}`,
        title: `${run.path}${run.message ? "\n" + run.message : ""}`},
      el("span", {class: "swatch"}), el("span", {class: "name"}, run.name));
      if (run.algo) chip.append(el("span", {class: "algo"}, run.algo));
      chip.append(el("span", {class: "progress"}, progress), status);
      const skipped = run.skipped_lines + (run.partial_last_line ? 1 : 0);
      if (skipped) chip.append(el("span", {class: "warn", title: "metrics.jsonl lines that are not complete JSON objects " +
        "(a run killed mid-write) are skipped"}, `⚠ ${skipped} line${skipped > 1 ? "s" : ""} skipped`));
      chip.addEventListener("click", (event) => {
        event.preventDefault();
        if (state.hidden.has(run.id)) state.hidden.delete(run.id); else state.hidden.add(run.id);
        chip.classList.toggle("off");
        redrawAll();
      });
      return chip;
    }));
  }

  // ------------------------------------------------------------------ completions
  const fmt = (v) => (v === null || v === undefined ? "" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)))) : String(v));

  async function loadCompletions() {
    const c = state.completions, runs = state.payload ? state.payload.runs : [];
    if (c.run === null || !runs[c.run]) return;
    let result;
    if (live) {
      const params = new URLSearchParams({run: c.run, step: c.step, q: c.query});
      const response = await fetch("api/completions?" + params);
      if (!response.ok) { $("c-summary").textContent = await response.text(); return; }
      result = await response.json();
    } else {
      result = staticCompletions(c.run, c.step, c.query);
    }
    c.rows = result.rows;
    renderStepChoice(result.steps, result.step);
    const more = result.total > result.rows.length ? ` (showing ${result.rows.length})` : "";
    $("c-summary").textContent = `${result.total} replies${more}` + (result.skipped ? `, ${result.skipped} unreadable lines skipped` : "") +
      (c.rows.length ? `; mean reward ${fmt(mean(c.rows.map((r) => r.reward)))}` : "");
    renderCompletionRows();
  }

  function staticCompletions(run, step, query) {
    const rows = (config.payload.completions || {})[run] || [];
    const steps = [...new Set(rows.map((r) => r.step))].sort((a, b) => a - b);
    const at = step === "latest" ? steps[steps.length - 1] : step === "all" ? -1 : Number(step);
    const needle = query.trim().toLowerCase();
    const hits = rows.filter((r) => (at === -1 || r.step === at) &&
      (!needle || r.prompt.toLowerCase().includes(needle) || r.completion.toLowerCase().includes(needle)));
    return {steps, step: at, rows: hits, total: hits.length, skipped: 0};
  }

  const mean = (values) => { const v = values.filter(Number.isFinite); return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null; };

  function renderStepChoice(steps, current) {
    const select = $("c-step"), chosen = state.completions.step;
    const options = [["latest", `latest (${steps.length ? steps[steps.length - 1] : "-"})`], ["all", "all steps"],
      ...steps.slice().reverse().map((s) => [String(s), String(s)])];
    if (select.options.length !== options.length) {
      select.replaceChildren(...options.map(([value, text]) => el("option", {value}, text)));
    } else {
      select.options[0].textContent = options[0][1];
    }
    select.value = chosen;
  }

  function highlight(text, needle) {
    const node = el("div");
    if (!needle) { node.textContent = text; return node; }
    const lower = text.toLowerCase();
    let at = 0;
    for (let hit = lower.indexOf(needle); hit !== -1; hit = lower.indexOf(needle, at)) {
      node.append(text.slice(at, hit), el("mark", {}, text.slice(hit, hit + needle.length)));
      at = hit + needle.length;
    }
    node.append(text.slice(at));
    return node;
  }

  function renderCompletionRows() {
    const c = state.completions, rows = c.rows.slice();
    const sources = [...new Set(rows.flatMap((r) => Object.keys(r.rewards || {})))];
    const hasGold = rows.some((r) => r.gold_reward !== undefined);
    const columns = [["step", "step"], ["reward", "reward"], ...sources.map((s) => ["rewards." + s, s]),
      ...(hasGold ? [["gold_reward", "gold"]] : []), ["advantage", "advantage"], ["length", "length"],
      ["truncated", "truncated"], ["prompt", "prompt"], ["completion", "reply"]];
    const value = (row, key) => key.startsWith("rewards.") ? (row.rewards || {})[key.slice(8)] : row[key];
    if (c.sortKey) rows.sort((a, b) => ((value(a, c.sortKey) ?? -Infinity) > (value(b, c.sortKey) ?? -Infinity) ? 1 : -1) * c.sortDir);
    const head = el("tr", {}, ...columns.map(([key, label]) => {
      const th = el("th", {title: "sort"}, label + (c.sortKey === key ? (c.sortDir > 0 ? " ▲" : " ▼") : ""));
      th.addEventListener("click", () => { c.sortDir = c.sortKey === key ? -c.sortDir : -1; c.sortKey = key; renderCompletionRows(); });
      return th;
    }));
    $("c-table").tHead.replaceChildren(head);
    const needle = c.query.trim().toLowerCase();
    $("c-table").tBodies[0].replaceChildren(...rows.map((row) => el("tr", {}, ...columns.map(([key]) => {
      const v = value(row, key);
      if (key === "prompt" || key === "completion") return el("td", {class: "text"}, highlight(String(v ?? ""), needle));
      return el("td", {class: "num"}, typeof v === "boolean" ? (v ? "yes" : "") : fmt(v));
    }))));
  }

  function renderCompletionRunChoice(runs) {
    const withRows = runs.filter((r) => r.completion_steps.length || (!live && (config.payload.completions || {})[r.id]));
    $("completions-count").textContent = withRows.length ? "" : "(none yet)";
    const select = $("c-run");
    const wanted = withRows.map((r) => `${r.id}:${r.name}`).join("|");
    if (select.dataset.runs !== wanted) {
      select.dataset.runs = wanted;
      select.replaceChildren(...withRows.map((r) => el("option", {value: r.id}, r.name)));
      if (state.completions.run === null || !withRows.some((r) => r.id === state.completions.run)) {
        state.completions.run = withRows.length ? withRows[0].id : null;
      }
      select.value = state.completions.run;
    }
  }

  // ------------------------------------------------------------------ evaluations
  function renderEvals(evals, runs) {
    const rows = evals.table;
    $("evals-count").textContent = rows.length ? `(${rows.length})` : "(none yet)";
    const names = [...new Set(rows.flatMap((r) => Object.keys(r.metrics)))].sort();
    $("e-table").tHead.replaceChildren(el("tr", {}, ...["run", "eval", "kind", "step", ...names].map((n) => el("th", {}, n))));
    $("e-table").tBodies[0].replaceChildren(...rows.map((r) => el("tr", {},
      el("td", {style: `color:${(runs[r.run_index] || {}).color}`}, r.run), el("td", {}, r.name + (r.problem ? " ⚠ " + r.problem : "")),
      el("td", {}, r.kind), el("td", {class: "num"}, fmt(r.step)), ...names.map((n) => el("td", {class: "num"}, fmt(r.metrics[n]))))));
    const grid = $("e-figures");
    const keep = new Set(evals.figures.map((f) => f.id));
    for (const [id, entry] of state.cards) if (!keep.has(id) && grid.contains(entry.el)) { Plotly.purge(entry.plot); state.cards.delete(id); }
    grid.replaceChildren(...evals.figures.map(card));
  }

  // ------------------------------------------------------------------ payload and polling
  function apply(payload) {
    state.payload = payload;
    state.version = payload.version;
    state.lastChange = Date.now();
    renderRuns(payload.runs);
    $("charts-empty").hidden = payload.sections.length > 0;
    const charts = $("tab-charts");
    const holder = charts.querySelector(".sections") || charts.appendChild(el("div", {class: "sections"}));
    renderSections(holder, payload.sections);
    renderEvals(payload.evals, payload.runs);
    renderCompletionRunChoice(payload.runs);
    if (state.tab === "completions" && state.completions.step !== "all") loadCompletions();
    document.body.dataset.version = String(payload.version);
  }

  async function poll() {
    try {
      const response = await fetch("api/data?have=" + (state.version ?? ""));
      const body = await response.json();
      if (!body.unchanged) apply(body);
      setLive("on");
    } catch (err) {
      setLive("off");
    }
    setTimeout(poll, config.poll_ms);
  }

  function setLive(mode) {
    const node = $("live");
    node.className = "live " + mode;
    if (mode === "off") { node.textContent = "disconnected: retrying"; return; }
    const seconds = Math.round((Date.now() - state.lastChange) / 1000);
    node.textContent = "live · last change " + (seconds < 2 ? "just now" : seconds + " s ago");
  }

  // ------------------------------------------------------------------ controls
  function showTab(name) {
    state.tab = name;
    for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
    for (const section of document.querySelectorAll(".tab")) section.classList.toggle("active", section.id === "tab-" + name);
    if (name === "completions") loadCompletions();
    window.dispatchEvent(new Event("resize"));
  }
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => showTab(button.dataset.tab));

  const slider = $("smoothing");
  slider.value = state.smoothing;
  $("smoothing-value").textContent = Number(state.smoothing).toFixed(2);
  slider.addEventListener("input", () => {
    state.smoothing = Number(slider.value);
    $("smoothing-value").textContent = state.smoothing.toFixed(2);
    redrawAll();
  });
  $("c-run").addEventListener("change", (e) => { state.completions.run = Number(e.target.value); state.completions.step = "latest"; loadCompletions(); });
  $("c-step").addEventListener("change", (e) => { state.completions.step = e.target.value; loadCompletions(); });
  let searchTimer = null;
  $("c-search").addEventListener("input", (e) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.completions.query = e.target.value; loadCompletions(); }, 200);
  });

  if (live) {
    poll();
    setInterval(() => { if (!$("live").classList.contains("off") && state.lastChange) setLive("on"); }, 1000);
  } else {
    apply(config.payload);
    $("live").textContent = "report of " + new Date(config.generated * 1000).toLocaleString();
  }
})();
