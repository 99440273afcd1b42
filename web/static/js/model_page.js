// Model page: polls /api/jobs/<id>/metrics?since=N and grows the Plotly charts in place (no reloads).
// Plotly comes from the installed `plotly` Python package (/vendor/plotly.min.js), never a CDN.
(function () {
  "use strict";
  const box = document.getElementById("charts");
  if (!box) return;
  const url = box.dataset.metricsUrl;
  const interval = Math.max(0.5, parseFloat(box.dataset.poll) || 2) * 1000;
  const charts = new Map();  // chart key -> {plot: div, traces: Map(series name -> trace), revision}
  let since = 0, itersPerEpoch = null, stopped = false;
  const FINISHED = ["done", "error", "aborted", "interrupted"];
  const COLORS = ["#2f6fde", "#e0543c", "#1f9d55", "#c77c02", "#8e44ad", "#0e9aa7", "#d6336c", "#5c6b7a"];
  // Nothing that would reach outside the app: no logo link, no "edit in Chart Studio".
  const CONFIG = { displaylogo: false, showLink: false, showSendToCloud: false, showEditInChartStudio: false,
                   responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d", "toImage"] };

  // Charts group outputs by name: train/loss and val/loss share the "loss" chart.
  function chartFor(name) {
    const key = name === "lr" ? "learning rate" : name.split("/").slice(1).join("/") || name;
    if (!charts.has(key)) {
      const empty = document.getElementById("charts-empty");
      if (empty) empty.remove();
      const root = document.createElement("div");
      root.className = "chart";
      root.dataset.chart = key;
      const title = document.createElement("div");
      title.className = "chart-title";
      title.textContent = key;
      const plot = document.createElement("div");
      plot.className = "plot";
      root.append(title, plot);
      box.appendChild(root);
      // A new chart can change the grid's columns: the drawn ones take their new width.
      if (window.Plotly) charts.forEach(c => { if (c.plot.data) Plotly.Plots.resize(c.plot); });
      charts.set(key, { key: key, plot: plot, traces: new Map(), revision: 0 });
    }
    return charts.get(key);
  }

  // Accuracy (a fraction from Caffe's Accuracy layer) is drawn in % on a fixed 0–100 axis.
  function isPercent(key) { return /accuracy/i.test(key); }

  function traceFor(chart, name) {
    if (!chart.traces.has(name)) {
      const val = name.startsWith("val/");
      chart.traces.set(name, {
        name: name, x: [], y: [], type: "scatter", mode: val ? "lines+markers" : "lines",
        line: { color: COLORS[chart.traces.size % COLORS.length], width: 1.6, shape: chart.key === "learning rate" ? "hv" : "linear" },
        marker: { size: 5 },
        hovertemplate: "epoch %{x:.3f}<br>" + (isPercent(chart.key) ? "%{y:.2f} %" : "%{y:.4g}") + "<extra>" + name + "</extra>",
      });
    }
    return chart.traces.get(name);
  }

  // Plotly spans a flat series ±1 around its value (accuracy 0.98 on a 0–2 axis): give one
  // value a narrow band instead; otherwise Plotly's own autorange.
  function flatRange(chart) {
    const ys = [...chart.traces.values()].flatMap(t => t.y).filter(v => v !== null && isFinite(v));
    if (!ys.length || chart.key === "learning rate") return undefined;
    const lo = Math.min(...ys), hi = Math.max(...ys);
    if (hi > lo) return undefined;
    const pad = Math.max(Math.abs(lo) * 0.05, 1e-3);
    return [lo - pad, hi + pad];
  }

  function layout(chart) {
    const percent = isPercent(chart.key);
    const range = percent ? [0, 100] : flatRange(chart);
    return {
      height: 240, margin: { l: 56, r: 12, t: 8, b: 36 }, datarevision: chart.revision,
      font: { size: 11 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      xaxis: { title: { text: "epoch", standoff: 4 }, zeroline: false, gridcolor: "#eff1f5" },
      yaxis: Object.assign({ zeroline: false, gridcolor: "#eff1f5", exponentformat: "e", ticksuffix: percent ? " %" : "",
                             rangemode: chart.key === "learning rate" ? "tozero" : "normal" },
                           range ? { range: range, autorange: false } : { autorange: true }),
      legend: { orientation: "h", x: 0, y: 1.12, font: { size: 10 } }, showlegend: true,
    };
  }

  function render(chart) {
    chart.revision += 1;
    const data = [...chart.traces.values()];
    Plotly.react(chart.plot, data, layout(chart), CONFIG);
  }

  function toEpoch(it) { return itersPerEpoch ? it / itersPerEpoch : it; }

  // The runner writes the train row of iteration N, then (after a validation that may outlast a
  // poll) the val row of the same N. So the next poll asks again from N itself (`since` is
  // inclusive) and each series keeps only rows past its own last iteration.
  const lastIter = new Map();  // series name -> last iteration drawn (or skipped as non-finite)
  function update(m) {
    if (m.iters_per_epoch) itersPerEpoch = m.iters_per_epoch;
    let last = since;
    const changed = new Set();
    Object.keys(m.series || {}).forEach(name => {
      const seen = lastIter.has(name) ? lastIter.get(name) : -Infinity;
      const fresh = m.series[name].filter(p => p[0] > seen);
      if (!fresh.length) return;
      fresh.forEach(p => { if (p[0] > last) last = p[0]; });
      lastIter.set(name, Math.max(...fresh.map(p => p[0])));
      // null = a non-finite value (the job's message says why): kept, Plotly leaves a gap
      const pts = fresh.filter(p => p[1] === null || isFinite(p[1]));
      if (!pts.length) return;
      const chart = chartFor(name);
      const trace = traceFor(chart, name);
      const scale = isPercent(chart.key) ? 100 : 1;
      pts.forEach(p => { trace.x.push(toEpoch(p[0])); trace.y.push(p[1] * scale); });
      changed.add(chart);
    });
    since = Math.max(since, last);
    if (window.Plotly) changed.forEach(render);
    let points = 0;
    charts.forEach(c => c.traces.forEach(t => { points += t.x.length; }));
    box.dataset.points = points;
    setProgress(m.progress);
    // The ETA comes from the live poll (a metrics poll with no new rows has none).
    if (m.status) {
      const badge = document.querySelector("#job-status .badge");
      if (badge && badge.textContent !== m.status) {
        badge.textContent = m.status;
        const cls = { done: "ok", running: "run", error: "err", aborted: "warn", interrupted: "warn" }[String(m.status).toLowerCase()] || "wait";
        badge.className = "badge badge-" + cls;
      }
      box.dataset.status = m.status;
      if (FINISHED.includes(String(m.status).toLowerCase())) stopped = true;
    }
  }

  function setProgress(p) {
    if (p === undefined || p === null) return;
    const pct = (p * 100).toFixed(1) + "%";
    document.getElementById("progress-bar").style.width = pct;
    document.getElementById("progress-text").textContent = pct;
  }

  // -- the live poll: progress, elapsed, ETA, snapshots, log (models.live) ---------------------
  const liveUrl = box.dataset.liveUrl;
  let elapsedBase = null, elapsedAt = 0, running = false, snapshotKey = null;

  function formatSize(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i ? n.toFixed(1) + " " + units[i] : Math.round(n) + " B";
  }

  function renderSnapshots(list) {
    const key = list.map(s => s.iteration + ":" + s.size).join(",");
    if (key === snapshotKey) return;
    snapshotKey = key;
    const body = document.querySelector("#snapshots tbody");
    if (!body) return;
    body.textContent = "";
    if (!list.length) {
      const tr = body.insertRow(), td = tr.insertCell();
      td.colSpan = 4; td.className = "muted"; td.textContent = "No snapshots yet.";
      return;
    }
    list.forEach(s => {
      const tr = body.insertRow();
      const cells = [String(s.iteration), s.epoch === null || s.epoch === undefined ? "–" : String(Number(s.epoch.toPrecision(3))),
                     formatSize(s.size)];
      cells.forEach((text, i) => { const td = tr.insertCell(); td.textContent = text; if (i < 2) td.className = "num"; });
      const links = tr.insertCell();
      const a = document.createElement("a"); a.href = s.file_url; a.textContent = ".caffemodel";
      const b = document.createElement("a"); b.href = s.archive_url; b.textContent = "model archive"; b.className = "archive-link";
      links.append(a, " · ", b);
    });
    const dl = document.getElementById("download-btn");
    if (dl && dl.tagName !== "A" && dl.dataset.href) {  // the first snapshot: Download model works now
      const link = document.createElement("a");
      link.className = "btn archive-link"; link.id = "download-btn"; link.href = dl.dataset.href; link.textContent = dl.textContent;
      dl.replaceWith(link);
    }
  }

  function renderElapsed() {
    const el = document.getElementById("elapsed");
    if (!el || elapsedBase === null) return;
    el.textContent = formatDuration(elapsedBase + (running ? (Date.now() - elapsedAt) / 1000 : 0));
  }

  function updateLive(l) {
    running = String(l.status || "").toLowerCase() === "running";
    setProgress(l.progress);
    const eta = document.getElementById("eta-text");
    if (eta) eta.textContent = running && l.eta ? "ETA " + formatDuration(l.eta) : "";
    if (l.elapsed !== undefined && l.elapsed !== null) { elapsedBase = l.elapsed; elapsedAt = Date.now(); renderElapsed(); }
    if (Array.isArray(l.snapshots)) renderSnapshots(l.snapshots);
    const log = document.getElementById("job-log");
    if (log && l.log && log.textContent !== l.log) {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = l.log;
      if (atEnd) log.scrollTop = log.scrollHeight;
    }
    const note = document.getElementById("waiting-note");
    if (note && !l.waiting_note) note.remove();
    if (l.hardware) renderHardware(l.hardware);
  }

  function mib(n) { return Math.round(n / 1048576); }

  function renderHardware(h) {  // the Hardware card, as model_show.html renders it
    const device = document.getElementById("hw-device");
    if (!device) return;
    device.textContent = h.device;
    const proc = document.getElementById("hw-process");
    if (proc) {
      const p = h.process;
      proc.textContent = p ? mib(p.rss_bytes) + " MiB memory, " +
        (p.cpu_percent === null || p.cpu_percent === undefined ? "–" : Math.round(p.cpu_percent)) +
        " % CPU (100 % = one core), " + p.threads + " threads" +
        (p.processes > 1 ? " in " + p.processes + " processes" : "") : "not running";
    }
    document.querySelectorAll("#hardware tr.hw-gpu").forEach((row, i) => {
      const g = (h.gpus || [])[i];
      if (g) row.cells[1].textContent = g.name + ": " + mib(g.memory_used) + " of " + mib(g.memory_total) +
        " MiB, " + g.utilization_percent + " % busy";
    });
  }

  setInterval(renderElapsed, 1000);

  function formatDuration(s) {
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? h + "h " + String(m).padStart(2, "0") + "m" : m ? m + "m " + String(sec).padStart(2, "0") + "s" : sec + "s";
  }

  if (!window.Plotly) {
    const note = document.getElementById("charts-empty");
    if (note) note.textContent = "The charting library (the plotly Python package) is not installed on this server; " +
                                 "the metrics are still available at " + url + ".";
  }

  async function poll() {
    try {
      const m = await apiFetch(url + "?since=" + since);
      update(m);
    } catch (e) {
      /* a missed poll is retried at the next tick */
    }
    if (liveUrl) {
      try {
        updateLive(await apiFetch(liveUrl));
      } catch (e) {
        /* same: retried at the next tick */
      }
    }
    if (!stopped) setTimeout(poll, interval);
    else if (document.getElementById("abort-btn")) setTimeout(() => location.reload(), 500);
  }
  poll();
})();

// Download model: the first download of a snapshot packs its archive on the server (seconds to
// minutes for a big net) before the first byte. The page says so until the download starts: the
// link carries a token the server's answer sets as a cookie (models.download), which ends the note.
(function () {
  "use strict";
  const note = document.getElementById("download-note");
  if (!note) return;
  let timer = null;
  function cookie(name) {
    const hit = document.cookie.split("; ").find(c => c.startsWith(name + "="));
    return hit ? decodeURIComponent(hit.slice(name.length + 1)) : null;
  }
  document.addEventListener("click", ev => {
    const link = ev.target.closest("a.archive-link");
    if (!link || ev.defaultPrevented || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    ev.preventDefault();
    const token = Math.random().toString(36).slice(2, 12);
    const started = Date.now();
    clearInterval(timer);
    note.hidden = false;
    note.dataset.state = "preparing";
    const say = () => {
      const s = Math.round((Date.now() - started) / 1000);
      note.textContent = "Preparing the model archive… " + s + " s. The first download of a snapshot packs it on the " +
                         "server (a minute or two for FCN-AlexNet); later downloads of it start at once.";
    };
    say();
    timer = setInterval(() => {
      if (cookie("caffeseg_download") === token) {
        clearInterval(timer);
        note.dataset.state = "started";
        note.textContent = "The download has started (see your browser's downloads).";
        setTimeout(() => { note.hidden = true; }, 4000);
        return;
      }
      say();
    }, 500);
    const url = new URL(link.href, location.href);
    url.searchParams.set("download_token", token);
    location.href = url.toString();
  });
})();

// A finished model is evaluated on the validation set right after training: show the table as
// soon as it is stored (polled for a few minutes; "Evaluate now" stays for the rest).
(function () {
  "use strict";
  const pending = document.getElementById("evaluation-pending");
  if (!pending) return;
  const deadline = Date.now() + 5 * 60 * 1000;
  async function check() {
    try {
      const evaluation = await apiFetch(pending.dataset.url);
      if (evaluation && evaluation.summary) { window.location.reload(); return; }
    } catch (e) { /* retried */ }
    if (Date.now() < deadline) setTimeout(check, 2000);
  }
  setTimeout(check, 2000);
})();
