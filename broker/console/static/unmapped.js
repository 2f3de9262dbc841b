/* The unmapped-fields report of one inbound adapter (field names and counts, never values). */
"use strict";

(() => {
  const { api, cell, fill, number, show, t } = Console;
  const select = document.getElementById("adapter");

  async function adapters() {
    const overview = await api("/api/overview");
    return overview.inbound.map((a) => a.id);
  }

  async function report(adapter) {
    const data = await api("/api/unmapped/" + encodeURIComponent(adapter));
    document.getElementById("messages").textContent = t("unmapped.messages", { n: number(data.messages) });
    fill(
      document.querySelector("#fields tbody"),
      Object.entries(data.fields).map(([field, count]) => {
        const tr = document.createElement("tr");
        tr.dataset.id = field;
        tr.append(cell(field, "field"), cell(number(count), "count", "num"));
        return tr;
      }),
      t("unmapped.none"),
    );
    fill(
      document.querySelector("#drops tbody"),
      data.dropped_segments.map((d) => {
        const tr = document.createElement("tr");
        tr.append(cell(d.location, "location"), cell(d.rule, "rule"), cell(number(d.count), "count", "num"));
        return tr;
      }),
      t("unmapped.no_drops"),
    );
  }

  async function start() {
    try {
      const ids = await adapters();
      const wanted = new URLSearchParams(window.location.search).get("adapter");
      select.replaceChildren(...ids.map((id) => new Option(id, id, false, id === wanted)));
      select.addEventListener("change", () => {
        const url = new URL(window.location.href);
        url.searchParams.set("adapter", select.value);
        window.history.replaceState(null, "", url);
        report(select.value).catch((e) => show("error", t("common.error", { detail: e.message })));
      });
      if (ids.length) await report(select.value);
      else show("error", t("overview.no_inbound"));
    } catch (error) {
      if (error.status !== 401) show("error", t("common.error", { detail: error.message }));
    }
  }

  start();
})();
