/* The overview: polls GET /api/overview every few seconds. */
"use strict";

(() => {
  const { age, api, cell, fill, number, poll, t, when } = Console;
  const PERIOD_MS = 3000;

  function codes(refused) {
    const parts = Object.entries(refused || {}).map(([code, n]) => code + " " + number(n));
    return parts.join(", ");
  }

  // Per inbound adapter, the received counts this page has seen over the last minute: the
  // server keeps counters, not per-adapter rates, so the rate is read from their growth.
  const WINDOW_S = 60;
  const seen = new Map();

  function receivedRate(adapter, at) {
    const points = (seen.get(adapter.id) || []).filter((p) => at - p.at <= WINDOW_S && p.received <= adapter.received);
    points.push({ at, received: adapter.received });
    seen.set(adapter.id, points);
    const first = points[0];
    if (points.length < 2 || at - first.at < 1) return "—";
    return t("overview.per_second", { n: ((adapter.received - first.received) / (at - first.at)).toFixed(1) });
  }

  function rate(flow) {
    if (!flow || flow.sustained_per_s === null || flow.sustained_per_s === undefined) return "—";
    return t("overview.per_second", { n: Number(flow.sustained_per_s).toFixed(1) });
  }

  /** Peers connected to an MLLP listener; an HTTP adapter has requests, not connections. */
  function peers(adapter) {
    if (adapter.transport === "http") return t("overview.not_applicable");
    return number(adapter.peers);
  }

  /** One end-to-end latency percentile (seconds in the document): ms below a second. */
  function latency(s, percentile) {
    const value = s.latency_s ? s.latency_s[percentile] : null;
    if (value === null || value === undefined) return "—";
    const ms = value * 1000;
    if (ms >= 1000) return t("common.seconds", { n: number(Math.round(value * 10) / 10) });
    return t("common.ms", { n: number(ms < 10 ? Math.round(ms * 10) / 10 : Math.round(ms)) });
  }

  function render(data) {
    fill(
      document.querySelector("#inbound tbody"),
      data.inbound.map((a) => {
        const tr = document.createElement("tr");
        tr.dataset.id = a.id;
        const name = document.createElement("th");
        name.scope = "row";
        name.textContent = a.id;
        tr.append(
          name,
          cell(number(a.received), "received", "num"),
          cell(receivedRate(a, data.at), "received_rate", "num"),
          cell(number(a.refused_total), "refused", "num"),
          cell(codes(a.refused), "refused_by_code"),
          cell(when(a.last_message_at), "last_message"),
          cell(peers(a), "peers", "num"),
        );
        return tr;
      }),
      t("overview.no_inbound"),
    );
    fill(
      document.querySelector("#subscribers tbody"),
      data.subscribers.map((s) => {
        const tr = document.createElement("tr");
        tr.dataset.id = s.id;
        const name = document.createElement("th");
        name.scope = "row";
        name.textContent = s.id;
        if (s.dead_letters_open > 0 || s.retrying > 0) tr.className = "attention";
        tr.append(
          name,
          cell(number(s.delivered), "delivered", "num"),
          cell(number(s.backlog), "backlog", "num"),
          cell(number(s.parked), "parked", "num"),
          cell(number(s.dead_letters_open), "dead_letters_open", "num"),
          // The partitions in a retry back-off, and when the first of them retries.
          cell(s.retrying ? number(s.retrying) + " (" + age(s.next_retry_in_s) + ")" : number(s.retrying), "retrying", "num"),
          cell(age(s.oldest_age_s), "oldest"),
          cell(rate(s.flow), "rate", "num"),
          cell(latency(s, "p50"), "p50", "num"),
          cell(latency(s, "p95"), "p95", "num"),
          cell(latency(s, "p99"), "p99", "num"),
        );
        return tr;
      }),
      t("overview.no_subscribers"),
    );
    const system = document.getElementById("system");
    const set = (field, text) => { system.querySelector(`[data-field="${field}"]`).textContent = text; };
    set("journal", number(data.pipeline.backlog));
    set("rejected", number(data.rejected));
    set("quarantine", number(data.quarantine));
    set("backpressure", data.backpressure.on ? t("overview.backpressure_on", { reason: data.backpressure.reason }) : t("overview.backpressure_off"));
    const memory = data.memory;
    set("memory", memory.limit_bytes ? t("overview.memory_of", { used: number(Math.round(memory.used_bytes / 1048576)), limit: number(Math.round(memory.limit_bytes / 1048576)) }) : t("overview.memory_mb", { used: number(Math.round(memory.used_bytes / 1048576)) }));
    const processes = data.processes || { listeners: [], workers: null };
    fill(
      document.querySelector("#listeners tbody"),
      processes.listeners.map((l) => {
        const tr = document.createElement("tr");
        tr.dataset.id = l.adapter;
        if (!l.accepting) tr.className = "attention";
        const name = document.createElement("th");
        name.scope = "row";
        name.textContent = l.adapter;
        tr.append(name, cell(l.address, "address", "id"), cell(l.accepting ? t("overview.accepting") : t("overview.not_accepting"), "state"));
        return tr;
      }),
      t("overview.no_listeners"),
    );
    const workers = processes.workers;
    let workersText = t("overview.workers_unknown");
    if (workers && workers.names) {
      workersText = workers.names.length
        ? t("overview.workers_answering", { n: workers.names.length, names: workers.names.join(", "), when: when(workers.checked_at) })
        : t("overview.workers_none", { when: when(workers.checked_at) });
    }
    set("workers", workersText);
    const list = document.getElementById("mappings");
    const items = data.mappings.in_force.map((ref) => {
      const li = document.createElement("li");
      li.textContent = ref;
      return li;
    });
    if (items.length === 0) {
      const li = document.createElement("li");
      li.textContent = t("overview.mappings_unknown");
      items.push(li);
    }
    list.replaceChildren(...items);
    const rejected = data.mappings.rejected_reload;
    const warning = document.getElementById("rejected-reload");
    warning.hidden = !rejected;
    if (rejected) {
      warning.textContent = t("overview.rejected_reload", {
        when: when(rejected.at),
        where: [rejected.file, rejected.line].filter((x) => x !== null && x !== undefined).join(":"),
        reason: rejected.reason,
      });
    }
    document.getElementById("updated").textContent = t("overview.updated", { when: when(data.at) });
  }

  poll(async () => render(await api("/api/overview")), PERIOD_MS);
})();
