// Behaviour shared by every page: CSRF-aware fetch, confirmations, tabs, select-all, path autocomplete.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]');

  // JSON fetch that sends the CSRF token and the X-Requested-With header the API requires.
  window.apiFetch = async function (url, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers = Object.assign({ "X-Requested-With": "caffeseg", "X-CSRFToken": csrf ? csrf.content : "" }, opts.headers);
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    const resp = await fetch(url, opts);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const err = new Error((data && data.error) || resp.statusText);
      err.data = data; err.status = resp.status;
      throw err;
    }
    return data;
  };

  document.addEventListener("click", function (ev) {
    const btn = ev.target.closest("[data-confirm]");
    if (btn && !window.confirm(btn.dataset.confirm)) ev.preventDefault();
  });

  // Home tabs switch without a reload (links still work without JS).
  document.querySelectorAll(".tab[data-tab]").forEach(function (tab) {
    tab.addEventListener("click", function (ev) {
      ev.preventDefault();
      document.querySelectorAll(".tab[data-tab]").forEach(t => t.classList.toggle("active", t === tab));
      document.querySelectorAll(".tab-panel").forEach(p => { p.hidden = p.id !== "panel-" + tab.dataset.tab; });
      history.replaceState(null, "", "?tab=" + tab.dataset.tab);
    });
  });

  document.querySelectorAll(".select-all").forEach(function (box) {
    box.addEventListener("change", function () {
      box.closest("table").querySelectorAll('input[name="job_ids"]').forEach(c => { c.checked = box.checked; });
    });
  });

  // Server-side path fields: suggestions restricted (server-side) to the configured data roots.
  document.querySelectorAll("[data-path-complete]").forEach(function (input) {
    const list = input.parentElement.querySelector(".path-suggest");
    if (!list) return;
    let timer = null, active = -1, asked = 0;
    function show(items) {
      list.innerHTML = "";
      items.forEach(function (path) {
        const li = document.createElement("li");
        li.textContent = path;
        li.addEventListener("mousedown", function (ev) { ev.preventDefault(); choose(path); });
        list.appendChild(li);
      });
      active = -1;
      list.hidden = items.length === 0;
    }
    function choose(path) {
      input.value = path;
      list.hidden = true;
      if (path.endsWith("/")) query();
    }
    async function query() {
      const mine = ++asked;  // only the answer to the latest question is shown
      try {
        const data = await apiFetch("/api/paths/complete?prefix=" + encodeURIComponent(input.value));
        if (mine === asked && document.activeElement === input) show(data.completions);
      } catch (e) { if (mine === asked) show([]); }
    }
    input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(query, 150); });
    input.addEventListener("focus", query);
    input.addEventListener("blur", function () { setTimeout(() => { list.hidden = true; }, 100); });
    input.addEventListener("keydown", function (ev) {
      const items = list.querySelectorAll("li");
      if (list.hidden || !items.length) return;
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        active = (active + (ev.key === "ArrowDown" ? 1 : -1) + items.length) % items.length;
        items.forEach((li, i) => li.classList.toggle("active", i === active));
      } else if ((ev.key === "Enter" || ev.key === "Tab") && active >= 0) {
        ev.preventDefault();
        choose(items[active].textContent);
      } else if (ev.key === "Escape") {
        list.hidden = true;
      }
    });
  });
})();
