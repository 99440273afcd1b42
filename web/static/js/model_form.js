// New-model form: network tabs, "Customize", editor line numbers, Visualize, dataset summary,
// and the live learning-rate preview.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const source = document.getElementById("network_source");
  const editor = document.getElementById("custom_network");
  const gutter = document.querySelector(".editor .gutter");

  function showTab(name) {
    source.value = name;
    document.querySelectorAll("[data-net-tab]").forEach(t => t.classList.toggle("active", t.dataset.netTab === name));
    document.querySelectorAll("[data-net-panel]").forEach(p => { p.hidden = p.dataset.netPanel !== name; });
    if (name === "custom") updateGutter();
  }
  document.querySelectorAll("[data-net-tab]").forEach(t => t.addEventListener("click", ev => { ev.preventDefault(); showTab(t.dataset.netTab); }));
  showTab(data.source || "standard");

  function updateGutter() {
    const lines = editor.value.split("\n").length;
    let out = "";
    for (let i = 1; i <= lines; i++) out += i + "\n";
    gutter.textContent = out;
    gutter.scrollTop = editor.scrollTop;
  }
  editor.addEventListener("input", updateGutter);

  // Ctrl+/ comments or uncomments the selected lines (the lab's "uncomment the Dice layer" step);
  // Tab inserts two spaces instead of leaving the editor.
  editor.addEventListener("keydown", ev => {
    if (ev.key === "Tab" && !ev.shiftKey) {
      ev.preventDefault();
      editor.setRangeText("  ", editor.selectionStart, editor.selectionEnd, "end");
      updateGutter();
    } else if (ev.key === "/" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      toggleComment();
    }
  });

  function toggleComment() {
    const text = editor.value;
    const start = text.lastIndexOf("\n", editor.selectionStart - 1) + 1;
    let end = text.indexOf("\n", Math.max(editor.selectionEnd - 1, editor.selectionStart));
    if (end < 0) end = text.length;
    const lines = text.slice(start, end).split("\n");
    const allCommented = lines.every(l => /^\s*#/.test(l) || !l.trim());
    const changed = lines.map(l => allCommented ? l.replace(/^(\s*)# ?/, "$1") : (l.trim() ? "# " + l : l)).join("\n");
    editor.setRangeText(changed, start, end, "select");
    updateGutter();
  }
  editor.addEventListener("scroll", () => { gutter.scrollTop = editor.scrollTop; });
  updateGutter();

  document.querySelectorAll(".customize").forEach(link => link.addEventListener("click", async ev => {
    ev.preventDefault();
    let text = "";
    if (link.dataset.source === "standard") {
      const net = (data.networks || []).find(n => n.name === link.dataset.name);
      text = net ? net.text : "";
    } else {
      const resp = await fetch("/jobs/" + encodeURIComponent(link.dataset.name) + "/files/original.prototxt");
      text = resp.ok ? await resp.text() : "# could not load the network of that model";
    }
    editor.value = text;
    showTab("custom");
  }));

  // Pretrained Networks: a model gives the network and its weights. Which weights depends on the
  // dataset's channels (known public models have a gray variant with conv1 summed over RGB).
  function pretrainedChoice(entry) {
    if (!entry) return null;
    if (entry.kind !== "known") return { ready: true, network: null, weights: entry.weights, steps: [] };
    const d = datasetInfo();
    const shape = d && d.summary && d.summary.feature_shape;
    if (!shape) return { ready: false, unknown: true, network: entry.network, steps: [] };
    return Object.assign({ variant: shape[0] === 1 ? "gray" : "rgb" }, entry.variants[shape[0] === 1 ? "gray" : "rgb"]);
  }
  function describeChoice(entry, c) {
    if (c.unknown) return "choose a built dataset to see which weights are used";
    if (!c.ready) return (c.variant === "gray" ? "gray" : "RGB") + " weights not made yet: run on the server " + c.steps.join(" && ");
    return (entry.kind === "known" ? c.variant + " weights " : "weights ") + c.weights;
  }
  function showPretrained() {
    (data.pretrained || []).forEach(entry => {
      const row = document.querySelector('tr[data-pretrained="' + CSS.escape(entry.id) + '"] .pretrained-status');
      if (row) row.textContent = describeChoice(entry, pretrainedChoice(entry));
    });
    const picked = document.querySelector("input[name=pretrained_network]:checked");
    const box = document.getElementById("pretrained-summary");
    if (!box) return;
    const entry = picked && (data.pretrained || []).find(p => p.id === picked.value);
    if (!entry) { box.textContent = "Choose a pretrained model."; return; }
    const c = pretrainedChoice(entry);
    box.dataset.network = entry.kind === "known" ? entry.network : "uploaded";
    box.dataset.weights = c.ready ? c.weights : "";
    box.dataset.ready = c.ready ? "1" : "0";
    box.classList.toggle("warn-text", !c.ready);
    box.textContent = "Network: " + (entry.kind === "known" ? "prototxt/" + entry.network + ".prototxt" : "the uploaded network of " + entry.name) +
      " · " + describeChoice(entry, c);
  }
  document.querySelectorAll("input[name=pretrained_network]").forEach(r => r.addEventListener("change", () => { showPretrained(); }));

  // Customize a pretrained model: its network goes to the editor, its weights to "Pretrained model(s)".
  document.querySelectorAll(".customize-pretrained").forEach(link => link.addEventListener("click", async ev => {
    ev.preventDefault();
    const box = document.getElementById("pretrained-summary");
    try {
      const chosen = await apiFetch("/api/pretrained/" + encodeURIComponent(link.dataset.id) + "/network?dataset=" +
                                    encodeURIComponent(datasetSelect.value));
      editor.value = chosen.network_text || "";
      const field = document.getElementById("pretrained_model");
      const paths = field.value.split(":").filter(Boolean);
      if (!paths.includes(chosen.weights)) paths.unshift(chosen.weights);
      field.value = paths.join(":");
      showTab("custom");
    } catch (err) {
      box.textContent = err.message;
      box.classList.add("warn-text");
    }
  }));

  document.getElementById("visualize").addEventListener("click", async () => {
    const out = document.getElementById("net-visualization");
    out.innerHTML = '<p class="muted">Building the network…</p>';
    try {
      const net = await apiFetch("/api/network/inspect", { method: "POST", json: { text: editor.value, dataset: document.getElementById("dataset").value } });
      NetGraph.draw(out, net);
    } catch (err) {
      NetGraph.showError(out, { message: err.message });  // the message names the line itself
      const line = err.data && err.data.line;
      if (line) selectLine(line);
    }
  });

  function selectLine(line) {
    const lines = editor.value.split("\n");
    let start = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    editor.focus();
    editor.setSelectionRange(start, start + (lines[line - 1] || "").length);
  }

  // Dataset summary beside the picker.
  const datasetSelect = document.getElementById("dataset");
  function datasetInfo() { return (data.datasets || []).find(d => d.id === datasetSelect.value); }
  function showSummary() {
    const box = document.getElementById("dataset-summary");
    const d = datasetInfo();
    drawLR();  // the preview's iterations per epoch follow the chosen dataset (or the assumption)
    if (!d) { box.textContent = "Choose a dataset to see its summary."; return; }
    const s = d.summary || {};
    const parts = [d.status];
    if (s.train_count != null) parts.push(s.train_count + " train / " + (s.val_count || 0) + " val records");
    else if (d.status !== "Done") parts.push("not built yet: the model waits for it");
    if (s.feature_shape) parts.push("features " + s.feature_shape.join("×") + " " + (s.feature_dtype || ""));
    if (s.classes && s.classes.length) parts.push(s.classes.length + " classes: " + s.classes.join(", "));
    box.textContent = parts.join(" · ");
  }
  datasetSelect.addEventListener("change", () => { showSummary(); showPretrained(); });

  // An error the server put beside a field goes away once the user changes that field.
  function clearFieldError(el) {
    const field = el.closest(".field.has-error");
    if (!field) return;
    field.classList.remove("has-error");
    field.querySelectorAll(".field-error").forEach(e => e.remove());
  }
  document.querySelectorAll("#model-form input, #model-form select").forEach(el => {
    el.addEventListener("input", () => clearFieldError(el));
    el.addEventListener("change", () => clearFieldError(el));
  });
  editor.addEventListener("input", () => {
    document.querySelectorAll('[data-net-panel="custom"] > .field-error').forEach(e => e.remove());
  });

  // Learning-rate preview.
  const adv = document.getElementById("advanced-lr");
  const toggle = document.getElementById("show-advanced-lr");
  const policy = document.getElementById("lr_policy");
  const chart = document.getElementById("lr-chart");
  function num(id, fallback) { const v = parseFloat(document.getElementById(id).value); return isFinite(v) ? v : fallback; }
  function firstOf(id, fallback) { const v = parseFloat((document.getElementById(id).value || "").split(",")[0]); return isFinite(v) && v > 0 ? v : fallback; }

  // Plotly (4.8 MB) is fetched the first time the preview is opened, not with the page.
  let plotlyState = window.Plotly ? "ready" : "none";  // none → loading → ready | failed
  const plotlyWaiting = [];
  function withPlotly(then) {
    if (plotlyState === "ready" || plotlyState === "failed") { then(); return; }
    plotlyWaiting.push(then);
    if (plotlyState === "loading") return;
    plotlyState = "loading";
    chart.classList.add("loading");
    const script = document.createElement("script");
    script.src = chart.dataset.plotlySrc;
    const done = state => () => {
      plotlyState = window.Plotly ? "ready" : state;
      chart.classList.remove("loading");
      plotlyWaiting.splice(0).forEach(fn => fn());
    };
    script.onload = done("failed");
    script.onerror = done("failed");
    document.head.appendChild(script);
  }
  // The options open with their chart (a moment, the first time); without Plotly they open anyway.
  function showAdvanced() {
    if (!toggle.checked) { adv.hidden = true; return; }
    toggle.setAttribute("aria-busy", "true");
    withPlotly(() => {
      toggle.removeAttribute("aria-busy");
      adv.hidden = !toggle.checked;
      drawLR();
    });
  }
  toggle.addEventListener("change", showAdvanced);
  // A page that comes back with a policy other than the default (a refused form, a clone) shows
  // the options it is using.
  if (policy.value !== (policy.dataset.default || "step")) { toggle.checked = true; showAdvanced(); }

  // Each policy's own defaults (DIGITS' model form). A value the user typed is kept; one left at
  // the previous policy's default (or unused by it) becomes the new policy's default.
  const PARAM_FIELDS = { lr_gamma: "gamma", lr_power: "power", lr_step_size: "step_size" };
  const typed = new Set();
  Object.keys(PARAM_FIELDS).forEach(id => document.getElementById(id).addEventListener("input", () => typed.add(id)));
  let lastPolicy = policy.value;
  policy.addEventListener("input", () => {
    const before = CaffeLR.DEFAULTS[lastPolicy] || {}, after = CaffeLR.DEFAULTS[policy.value] || {};
    lastPolicy = policy.value;
    Object.keys(PARAM_FIELDS).forEach(id => {
      const key = PARAM_FIELDS[id], field = document.getElementById(id);
      if (after[key] === undefined || typed.has(id)) return;
      const value = parseFloat(field.value);
      if (field.value === "" || before[key] === undefined || value === before[key]) field.value = after[key];
    });
  });

  // The TRAIN batch of a network text: the batch_size of the first Data layer included in the
  // train stage (DIGITS nets: include { stage: "train" } or phase: TRAIN), else the first one.
  function trainBatch(text) {
    const re = /batch_size\s*:\s*(\d+)/g;
    let m, first = null;
    while ((m = re.exec(text || "")) !== null) {
      const layerStart = text.lastIndexOf("layer", m.index);
      const head = text.slice(Math.max(0, layerStart), m.index);
      if (first === null) first = parseInt(m[1], 10);
      if (/stage\s*:\s*"train"|phase\s*:\s*TRAIN/.test(head)) return parseInt(m[1], 10);
    }
    return first;
  }
  // The chosen network's text, when the page has it (Previous Networks: not shown here).
  function chosenNetworkText() {
    const tab = source.value || "standard";
    if (tab === "custom") return editor.value;
    if (tab === "standard") {
      const radio = document.querySelector("input[name=standard_network]:checked");
      const net = radio && (data.networks || []).find(n => n.name === radio.value);
      return net ? net.text : null;
    }
    if (tab === "pretrained") {
      const radio = document.querySelector("input[name=pretrained_network]:checked");
      const entry = radio && (data.pretrained || []).find(p => p.id === radio.value);
      const net = entry && (data.networks || []).find(n => n.name === entry.network);
      return net ? net.text : null;
    }
    return null;
  }
  // The batch the training will use: the form's first value, else the network's own, else 16 (assumed).
  function effectiveBatch() {
    const typed = firstOf("batch_size", null);
    if (typed) return { size: typed, origin: "the form's" };
    const own = trainBatch(chosenNetworkText());
    if (own) return { size: own, origin: "the network's" };
    return { size: 16, origin: "assumed" };
  }

  function drawLR() {
    document.querySelectorAll(".lr-param").forEach(f => { f.hidden = !f.classList.contains("lr-" + policy.value); });
    const d = datasetInfo();
    const known = d && d.summary && d.summary.train_count;
    const trainCount = known || 100;
    const chosenBatch = effectiveBatch();
    const batch = chosenBatch.size * Math.max(1, num("batch_accumulation", 1));
    const epochs = Math.max(1, num("epochs", 1));
    const itersPerEpoch = Math.max(1, Math.ceil(trainCount / batch));
    const maxIter = Math.min(itersPerEpoch * epochs, 200000);
    const defaults = CaffeLR.DEFAULTS[policy.value] || {};
    document.getElementById("lr-preview-info").textContent =
      "(" + maxIter + " iterations, " + itersPerEpoch + " per epoch: " + (known ? trainCount + " training records" : "assuming 100 training records") +
      ", batch " + chosenBatch.size + " (" + chosenBatch.origin + ")" + (batch !== chosenBatch.size ? " × " + (batch / chosenBatch.size) + " accumulated" : "") + ")";
    if (adv.hidden) return;
    const params = CaffeLR.solverParams({
      policy: policy.value, base_lr: firstOf("base_lr", 0.01), gamma: num("lr_gamma", defaults.gamma || 0.1),
      power: num("lr_power", defaults.power || 0.75), step_size: num("lr_step_size", defaults.step_size || 33),
      step_values: (document.getElementById("lr_step_values").value || "").split(",").map(parseFloat).filter(isFinite),
    }, maxIter);
    let rates;
    try { rates = CaffeLR.schedule(params); } catch (e) { return; }
    chart.dataset.rates = JSON.stringify(rates.length > 2000 ? [] : rates);
    if (window.Plotly) {
      // Every iteration's rate, x in epochs; Plotly from the installed plotly package (/vendor/).
      const step = Math.max(1, Math.floor(rates.length / 2000));
      const x = [], y = [];
      for (let i = 0; i < rates.length; i += step) { x.push(i / itersPerEpoch); y.push(rates[i]); }
      Plotly.react(chart, [{ x: x, y: y, type: "scatter", mode: "lines", line: { color: "#2f6fde", width: 1.6, shape: "hv" },
                             name: "learning rate", hovertemplate: "epoch %{x:.2f}<br>lr %{y:.4g}<extra></extra>" }],
                   { height: 170, margin: { l: 56, r: 10, t: 6, b: 34 }, font: { size: 10 }, showlegend: false,
                     paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
                     xaxis: { title: { text: "epoch", standoff: 2 }, range: [0, epochs], zeroline: false, gridcolor: "#eff1f5" },
                     yaxis: { rangemode: "tozero", exponentformat: "e", gridcolor: "#eff1f5" } },
                   { displaylogo: false, showLink: false, responsive: true, displayModeBar: false });
    }
  }
  // Cost hint: time per epoch from the latest training of the chosen standard network here
  // (data.costs: seconds per training image, validation and snapshots included) × the dataset's
  // training records; hours suggest a smaller run.
  const HOUR = 3600;
  function chosenStandardName() {
    const tab = source.value || "standard";
    if (tab === "standard") {
      const radio = document.querySelector("input[name=standard_network]:checked");
      return radio ? radio.value : null;
    }
    if (tab === "pretrained") {
      const radio = document.querySelector("input[name=pretrained_network]:checked");
      const entry = radio && (data.pretrained || []).find(p => p.id === radio.value);
      return entry ? entry.network : null;
    }
    return null;
  }
  function formatTime(s) {
    if (s < 90) return Math.round(s) + " s";
    if (s < 2 * HOUR) return (s / 60).toFixed(1) + " min";
    return (s / HOUR).toFixed(1) + " h";
  }
  // No training of the network here yet: the server measures one training step in the
  // background (models.cost_estimate); asked again every 2 s while it measures.
  const estimates = {};
  async function askEstimate(key, network, dataset) {
    const hint = document.getElementById("cost-hint");
    estimates[key] = { state: "measuring" };
    try {
      const url = hint.dataset.estimateUrl + "?network=" + encodeURIComponent(network) + "&dataset=" + encodeURIComponent(dataset);
      estimates[key] = await apiFetch(url);
    } catch (e) {
      estimates[key] = { state: "error", message: (e.data && e.data.message) || e.message };
    }
    if (estimates[key].state === "measuring") setTimeout(() => { delete estimates[key]; showCost(); }, 2000);
    else showCost();
  }
  function showCost() {
    const hint = document.getElementById("cost-hint");
    if (!hint) return;
    const name = chosenStandardName(), d = datasetInfo();
    const records = d && d.summary && d.summary.train_count;
    const cost = name && (data.costs || {})[name];
    hint.classList.remove("warn-text");
    if (!name || !records) { hint.hidden = true; return; }
    hint.hidden = false;
    const epochs = Math.max(1, num("epochs", 1));
    let perEpoch, basis;
    if (cost) {
      perEpoch = cost.seconds_per_image * records;
      basis = "measured on " + cost.job_name + ", " + cost.job_id + ": " + formatTime(cost.seconds) + " for " +
              cost.images + " training images, validation included";
    } else {
      const key = name + "|" + d.id, est = estimates[key];
      if (!est) { askEstimate(key, name, d.id); hint.textContent = "Measuring a training step of this network here…"; return; }
      if (est.state === "measuring") { hint.textContent = "Measuring a training step of this network here…"; return; }
      if (est.state !== "done") {
        hint.textContent = "No training of this network has run here yet, and a training step could not be measured (" +
                           (est.message || "unknown error") + "): the first training shows its time per epoch.";
        return;
      }
      perEpoch = est.seconds_per_image * records;
      basis = "estimated from one training step (batch " + est.batch + ") measured here; no training of this network has run " +
              "here yet, validation not included";
    }
    const total = perEpoch * epochs;
    let text = "About " + formatTime(perEpoch) + " per epoch here (" + records + " training records; " + basis + "), so " +
               formatTime(total) + " for " + epochs + " epoch" + (epochs === 1 ? "" : "s") + ".";
    if (total >= HOUR) {
      const fit = Math.max(1, Math.floor(HOUR / perEpoch));
      text += " That is hours: for a first look try " + (fit < epochs ? fit + " epoch" + (fit === 1 ? "" : "s") + " (about an hour), " : "") +
              "a smaller dataset, or a slimmer network (lab CNN, U-Net).";
      hint.classList.add("warn-text");
    }
    hint.textContent = text;
  }
  document.querySelectorAll("#model-form input, #model-form select").forEach(i => i.addEventListener("input", showCost));
  document.querySelectorAll("#model-form input[type=radio]").forEach(i => i.addEventListener("change", showCost));
  document.querySelectorAll("[data-net-tab]").forEach(t => t.addEventListener("click", () => setTimeout(showCost)));
  datasetSelect.addEventListener("change", showCost);
  showCost();

  document.querySelectorAll("#model-form input, #model-form select").forEach(i => i.addEventListener("input", drawLR));
  // The network (its batch) can change without an input event: tabs, radios, Customize.
  document.querySelectorAll("#model-form input[type=radio]").forEach(i => i.addEventListener("change", drawLR));
  document.querySelectorAll("[data-net-tab]").forEach(t => t.addEventListener("click", () => setTimeout(drawLR)));
  editor.addEventListener("input", drawLR);
  showSummary();
  showPretrained();
  showAdvanced();  // a browser that restored the checkbox (Back) opens the options again
})();

// Previous Networks: "Start from its weights" offers only the snapshots of the chosen model.
(function () {
  "use strict";
  const select = document.getElementById("previous_snapshot");
  if (!select) return;
  function chosen() {
    const radio = document.querySelector("input[name=previous_network]:checked");
    return radio ? radio.value : null;
  }
  function filter() {
    const id = chosen();
    [...select.options].forEach(o => { o.hidden = o.value !== "" && (!id || !o.value.startsWith(id + ":")); });
    if (select.selectedOptions.length && select.selectedOptions[0].hidden) select.value = "";
  }
  document.querySelectorAll("input[name=previous_network]").forEach(r => r.addEventListener("change", filter));
  filter();
})();
