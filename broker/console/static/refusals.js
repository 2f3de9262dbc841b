/* Rejected input (refused at the edge) and quarantined messages, newest first; no content. */
"use strict";

(() => {
  const { api, cell, fill, number, poll, when } = Console;

  function entryTime(id) {
    return Number(String(id).split("-")[0]) / 1000;
  }

  function row(values, id) {
    const tr = document.createElement("tr");
    tr.dataset.id = id;
    tr.append(...values);
    return tr;
  }

  async function load() {
    const [rejected, quarantine] = await Promise.all([api("/api/rejected?limit=200"), api("/api/quarantine?limit=200")]);
    fill(
      document.querySelector("#rejected tbody"),
      rejected.map((r) => row([
        cell(when(entryTime(r.id)), "when"),
        cell(r.adapter, "adapter"),
        cell(r.peer, "peer"),
        cell(number(r.bytes), "bytes", "num"),
        cell(r.reason, "reason"),
      ], r.id)),
    );
    fill(
      document.querySelector("#quarantine tbody"),
      quarantine.map((q) => row([
        cell(when(entryTime(q.id)), "when"),
        cell(q.adapter || "—", "adapter"),
        cell(q.envelope_id || "—", "envelope_id", "id"),
        cell(q.reason, "reason"),
      ], q.id)),
    );
  }

  poll(load, 10000);
})();
