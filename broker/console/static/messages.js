/* The message browser: the message store's search (GET /api/messages) with every filter it
   takes, a page at a time ("More" follows the `next` cursor); each row leads to the message's
   trace page. The filters live in the address, so the back button returns to the results. */
"use strict";

(() => {
  const { ApiError, api, badge, cell, fill, show, states, t, when } = Console;
  const form = document.getElementById("search");
  const table = document.getElementById("results");
  const more = document.getElementById("more");
  const TIMES = ["since", "until"];
  let next = null;
  let shown = [];

  for (const state of states()) {
    const option = document.createElement("option");
    option.value = state;
    option.textContent = badge(state).textContent;
    document.getElementById("q-state").append(option);
  }

  /** The form's filters as query parameters; local times become ISO 8601 with their offset. */
  function filters() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (!value) continue;
      params.set(name, TIMES.includes(name) ? new Date(value).toISOString() : value.trim());
    }
    return params;
  }

  /** Fill the form from the address (a reload or the back button keeps the search). */
  function restore(params) {
    for (const element of form.elements) {
      if (!element.name || !params.has(element.name)) continue;
      const value = params.get(element.name);
      if (TIMES.includes(element.name)) {
        const moment = new Date(value);
        if (Number.isNaN(moment.getTime())) continue;
        const local = new Date(moment.getTime() - moment.getTimezoneOffset() * 60000);
        element.value = local.toISOString().slice(0, 19);
      } else {
        element.value = value;
      }
    }
  }

  function row(m) {
    const tr = document.createElement("tr");
    tr.dataset.id = m.id;
    const link = document.createElement("a");
    link.href = "/console/messages/" + encodeURIComponent(m.id);
    link.textContent = m.control_id || m.id;
    link.title = t("messages.open_trace");
    const deliveries = document.createElement("span");
    deliveries.className = "badges";
    deliveries.append(...(m.deliveries || []).map((d) => badge(d.state, d.subscriber)));
    tr.append(
      cell(when(Date.parse(m.received_at) / 1000), "received_at"),
      cell(link, "control_id", "id"),
      cell(m.adapter, "adapter"),
      cell(m.event, "event"),
      cell(badge(m.state), "state"),
      cell(deliveries, "deliveries"),
    );
    return tr;
  }

  async function search(params, append) {
    try {
      const page = await api("/api/messages?" + params.toString());
      show("unavailable", "");
      show("error", "");
      shown = append ? shown.concat(page.items) : page.items;
      next = page.next;
      table.hidden = false;
      fill(table.querySelector("tbody"), shown.map(row), t("messages.none"));
      more.hidden = !next;
      const n = shown.length;
      document.getElementById("count").textContent = next ? t("messages.count_more", { n }) : t("messages.count", { n });
    } catch (error) {
      if (error instanceof ApiError && error.status === 503) {
        show("unavailable", t("messages.unavailable", { detail: error.message }));
      } else if (error.status !== 401) {
        show("error", t("common.error", { detail: error.message }));
      }
    }
  }

  async function names() {
    try {
      const overview = await api("/api/overview");
      for (const [id, rows] of [["adapters", overview.inbound], ["subscribers", overview.subscribers]]) {
        document.getElementById(id).replaceChildren(...rows.map((r) => {
          const option = document.createElement("option");
          option.value = r.id;
          return option;
        }));
      }
    } catch (_) {
      // Suggestions only: the search works without them.
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = filters();
    const url = new URL(window.location.href);
    url.search = params.toString();
    window.history.replaceState(null, "", url);
    search(params, false);
  });
  form.addEventListener("reset", () => {
    window.history.replaceState(null, "", window.location.pathname);
    window.setTimeout(() => search(filters(), false), 0);
  });
  more.addEventListener("click", () => {
    const params = filters();
    params.set("before", next);
    search(params, true);
  });

  restore(new URLSearchParams(window.location.search));
  search(filters(), false);
  names();
})();
