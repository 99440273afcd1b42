// Compare form: ticking models lists the validation records of their dataset in the record
// select (GET /compare/records?models=...), keeping the chosen record when it is still offered.
(function () {
  "use strict";
  const form = document.getElementById("compare-form");
  if (!form) return;
  const select = form.querySelector("#record");
  const note = form.querySelector("#record-note");
  let asked = 0;

  async function refresh() {
    const ticked = [...form.querySelectorAll("input[name=models]:checked")].map(c => c.value);
    const mine = ++asked;
    const params = new URLSearchParams();
    ticked.forEach(id => params.append("models", id));
    let listing;
    try {
      const resp = await fetch(form.dataset.recordsUrl + "?" + params.toString(), {headers: {"Accept": "application/json"}});
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      listing = await resp.json();
    } catch (err) {
      listing = {records: [], note: "Could not list the records (" + err.message + ")."};
    }
    if (mine !== asked) return;  // a newer tick answered first
    const keep = select.value;
    select.innerHTML = "";
    const first = document.createElement("option");
    first.value = "";
    first.textContent = listing.records.length ? "— choose a record —" : "— tick a model first —";
    select.appendChild(first);
    listing.records.forEach(r => {
      const o = document.createElement("option");
      o.value = r.key; o.textContent = r.name || r.key;
      if (r.key === keep) o.selected = true;
      select.appendChild(o);
    });
    if (note) note.textContent = listing.note || "";
    form.dataset.recordsReady = String(mine);
  }

  form.querySelectorAll("input[name=models]").forEach(c => c.addEventListener("change", refresh));
})();
