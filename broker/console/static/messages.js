/* The message browser: search GET /api/messages?… (the message store). Until the store's
   search route exists the page says so; it never shows made-up data. */
"use strict";

(() => {
  const { ApiError, api, cell, fill, show, t } = Console;
  const form = document.getElementById("search");

  async function search(params) {
    try {
      const found = await api("/api/messages?" + params.toString());
      show("unavailable", "");
      const table = document.getElementById("results");
      table.hidden = false;
      fill(
        table.querySelector("tbody"),
        found.map((m) => {
          const tr = document.createElement("tr");
          tr.dataset.id = m.id;
          const deliveries = (m.deliveries || []).map((d) => d.subscriber + ": " + d.state).join(", ");
          tr.append(cell(m.id, "id", "id"), cell(m.control_id, "control_id"), cell(m.adapter, "adapter"), cell(m.event, "event"), cell(deliveries, "deliveries"));
          return tr;
        }),
        t("messages.none"),
      );
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
        show("unavailable", t("messages.unavailable"));
      } else if (error.status !== 401) {
        show("error", t("common.error", { detail: error.message }));
      }
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) params.set(name, value);
    search(params);
  });
  search(new URLSearchParams({ limit: "50" }));
})();
