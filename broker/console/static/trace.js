/* One message's trace (GET /api/messages/{id}/trace): what was received, the canonical Bundle,
   per subscriber the routing decision and every delivery attempt, and the operators' actions.
   The content is patient data: it is set as text only, and folded until asked for. */
"use strict";

(() => {
  const { api, badge, cell, fill, number, show, t, when } = Console;
  const id = document.getElementById("title").dataset.id;

  function epoch(iso) {
    return iso ? Date.parse(iso) / 1000 : null;
  }

  /** HL7 v2 separates segments with CR: one per line on the page. */
  function lines(text) {
    return text === null || text === undefined ? "" : String(text).replace(/\r\n?/g, "\n");
  }

  function pre(text) {
    const element = document.createElement("pre");
    element.className = "content";
    element.textContent = lines(text);
    return element;
  }

  function content(detailsId, text) {
    const details = document.getElementById(detailsId);
    if (!details) return; // withheld: the role may not read message bodies
    details.querySelector("pre").textContent = text || t("trace.nothing");
  }

  function list(listId, items) {
    const ul = document.getElementById(listId);
    const shown = items.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    });
    if (shown.length === 0) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = t("common.none");
      shown.push(li);
    }
    ul.replaceChildren(...shown);
  }

  function summary(m) {
    const set = (field, value) => {
      const dd = document.querySelector(`#summary dd[data-field="${field}"]`);
      if (value instanceof Node) dd.replaceChildren(value);
      else dd.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
    };
    for (const field of ["id", "control_id", "adapter", "peer", "sender", "event", "version", "reason", "ack_code"]) {
      set(field, m[field]);
    }
    set("received_at", when(epoch(m.received_at)));
    set("state", badge(m.state));
    set("identifiers", (m.identifiers || []).map((i) => i.kind + " " + i.value).join(", "));
    set("mappings", (m.mappings || []).map((r) => r.id + "@" + String(r.sha256 || "").slice(0, 12)).join(", "));
  }

  function code(attempt) {
    if (attempt.ack_code) return "ACK " + attempt.ack_code;
    if (attempt.http_status !== null && attempt.http_status !== undefined) return "HTTP " + attempt.http_status;
    return "—";
  }

  function subscriber(delivery) {
    const article = document.getElementById("subscriber").content.firstElementChild.cloneNode(true);
    article.dataset.subscriber = delivery.subscriber;
    article.querySelector(".name").textContent = delivery.subscriber;
    article.querySelector(".state").append(badge(delivery.state));
    const filtered = delivery.state === "filtered";
    const decision = article.querySelector(".decision");
    decision.dataset.field = "decision";
    decision.textContent = filtered
      ? t("trace.filtered", { reason: delivery.reason || "—" })
      : delivery.state === null || delivery.state === undefined
        ? t("trace.attempts_only")
        : t("trace.wanted");
    if (!filtered && delivery.reason) {
      const why = document.createElement("span");
      why.className = "reason";
      why.textContent = " " + t("trace.last_reason", { reason: delivery.reason });
      decision.append(why);
    }
    const tries = delivery.attempt_log || [];
    const tbody = article.querySelector("tbody");
    fill(
      tbody,
      tries.map((a, index) => {
        const tr = document.createElement("tr");
        tr.dataset.outcome = a.outcome;
        tr.append(
          cell(String(index + 1), "n", "num"),
          cell(when(epoch(a.at)), "at"),
          cell(t("common.ms", { n: number(Math.round(a.duration_ms * 10) / 10) }), "duration", "num"),
          cell(badge(a.outcome), "outcome"),
          cell(code(a), "code"),
          cell(pre(a.error ? [a.reply, a.error].filter(Boolean).join("\n") : a.reply), "reply"),
        );
        return tr;
      }),
      filtered ? t("trace.not_sent") : t("trace.no_attempt"),
    );
    return article;
  }

  /** The raw and canonical message come only with a reason, and that view is audited. */
  function bodies(m) {
    const withheld = m.raw === null && m.canonical === null && m.content !== "shown";
    content("raw", withheld ? t("trace.content_withheld") : lines(m.raw));
    content("canonical", withheld ? t("trace.content_withheld") : m.canonical ? JSON.stringify(m.canonical, null, 2) : "");
  }

  function render(m) {
    document.getElementById("title").textContent = t("trace.of", { control_id: m.control_id || m.id });
    summary(m);
    bodies(m);
    content("ack", lines(m.ack));
    list("findings", (m.findings || []).map((f) => [f.severity, f.location, f.code, f.message].filter(Boolean).join(" · ")));
    list("unmapped", (m.unmapped || []).map(String));
    const subscribers = document.getElementById("subscribers");
    subscribers.replaceChildren(...(m.deliveries || []).map(subscriber));
    if ((m.deliveries || []).length === 0) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = t("trace.no_subscriber");
      subscribers.append(p);
    }
    fill(
      document.querySelector("#actions tbody"),
      (m.actions || []).map((a) => {
        const tr = document.createElement("tr");
        tr.append(cell(when(epoch(a.at)), "at"), cell(a.subscriber, "subscriber"), cell(a.action, "action"), cell(a.who, "who"), cell(a.why, "why"));
        return tr;
      }),
      t("trace.no_action"),
    );
    document.getElementById("trace").hidden = false;
  }

  async function load() {
    try {
      render(await api("/api/messages/" + encodeURIComponent(id) + "/trace"));
      show("loading", "");
    } catch (error) {
      show("loading", "");
      if (error.status === 404) show("error", t("trace.not_found"));
      else if (error.status !== 401) show("error", t("common.error", { detail: error.message }));
    }
  }

  document.getElementById("content-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const reason = document.getElementById("content-reason").value;
    try {
      bodies(await api("/api/messages/" + encodeURIComponent(id) + "/trace?reason=" + encodeURIComponent(reason)));
      show("error", "");
    } catch (error) {
      if (error.status !== 401) show("error", t("common.error", { detail: error.message }));
    }
  });

  load();
})();
