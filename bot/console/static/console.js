// NightOwl console: optional enhancements. Every page works without this file.
"use strict";

function compareLive(form, submitter) {
  const live = document.getElementById("live");
  const data = new FormData(form);
  const adapters = data.getAll("adapter");
  const modes = data.getAll("retrieval").length ? data.getAll("retrieval") : ["on"];
  const labels = [];
  for (const a of adapters) for (const m of modes) labels.push(a + " · " + (m === "on" ? "with" : "without") + " retrieval");
  live.replaceChildren();
  const cells = labels.slice(0, 6).map((label) => {
    const sec = document.createElement("section");
    sec.className = "answer streaming";
    const h = document.createElement("h3"); h.textContent = label;
    const text = document.createElement("div"); text.className = "text";
    const meta = document.createElement("p"); meta.className = "meta"; meta.textContent = "…";
    sec.append(h, text, meta); live.append(sec);
    return {sec, text, meta};
  });
  live.hidden = false;
  const old = document.getElementById("results"); if (old) old.remove();
  submitter.disabled = true;
  fetch("/compare/stream", {method: "POST", body: data, headers: {"X-CSRF-Token": data.get("csrf")}})
    .then(async (resp) => {
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += decoder.decode(value, {stream: true});
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const ev = JSON.parse(buf.slice(0, nl)); buf = buf.slice(nl + 1);
          const cell = cells[ev.col]; if (!cell) continue;
          if (ev.delta) cell.text.textContent += ev.delta;
          if (ev.done) {
            cell.sec.classList.remove("streaming"); cell.sec.classList.add("finished");
            cell.meta.textContent = ev.error ? "error: " + ev.error :
              "answered by " + ev.adapter + " · " + ev.latency_s + " s" + (ev.sources.length ? " · sources: " + ev.sources.join(", ") : "");
          }
        }
      }
    })
    .finally(() => { submitter.disabled = false; live.dataset.done = "1"; });
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("compare-form");
  if (form && window.fetch && window.ReadableStream) {
    form.addEventListener("submit", (ev) => {
      if (ev.submitter && ev.submitter.id === "compare-go") { ev.preventDefault(); compareLive(form, ev.submitter); }
    });
  }
  const files = document.getElementById("files");
  if (files) {
    const drop = files.closest(".drop");
    for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, () => drop.classList.add("over"));
    for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
    files.addEventListener("change", () => {
      drop.dataset.chosen = Array.from(files.files).map((f) => f.name).join(", ");
    });
  }
});
