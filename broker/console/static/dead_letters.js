/* Dead letters: per subscriber, one subscriber's list, one dead letter with its attempts, and
   the actions of the API (replay, edit-and-replay, discard), each asking why. A dead letter is
   opened without its content; its Bundle (patient data) is loaded only to edit it, with the
   reason the form already asks for, and that view is audited with it. */
"use strict";

(() => {
  const { api, button, cell, fill, may, number, show, t, when } = Console;
  const params = new URLSearchParams(window.location.search);
  let subscriber = params.get("subscriber");
  let current = null;

  function go(sub, id) {
    const url = new URL(window.location.href);
    url.search = "";
    if (sub) url.searchParams.set("subscriber", sub);
    if (id) url.searchParams.set("id", id);
    window.history.replaceState(null, "", url);
  }

  function fail(error) {
    if (error.status !== 401) show("error", t("common.error", { detail: error.message }));
  }

  async function loadSubscribers() {
    const subs = await api("/api/dead-letters");
    document.getElementById("none").hidden = subs.length > 0;
    fill(
      document.querySelector("#subscribers tbody"),
      subs.map((s) => {
        const tr = document.createElement("tr");
        tr.dataset.id = s.subscriber;
        const name = document.createElement("th");
        name.scope = "row";
        name.append(button(s.subscriber, () => openList(s.subscriber).catch(fail), "link"));
        tr.append(name, cell(number(s.open), "open", "num"), cell(number(s.total), "total", "num"));
        return tr;
      }),
      t("dead.none"),
    );
  }

  async function openList(sub) {
    subscriber = sub;
    go(sub, null);
    document.getElementById("one").hidden = true;
    const status = document.getElementById("status").value;
    const letters = await api(`/api/dead-letters/${encodeURIComponent(sub)}?status=${status}&limit=200`);
    document.getElementById("h-list").textContent = t("dead.of", { subscriber: sub });
    document.getElementById("list-section").hidden = false;
    fill(
      document.querySelector("#letters tbody"),
      letters.map((d) => {
        const tr = document.createElement("tr");
        tr.dataset.id = d.id;
        tr.append(
          cell(d.id, "id", "id"),
          cell(d.envelope_id, "envelope_id", "id"),
          cell(when(d.dead_lettered_at), "when"),
          cell(t("dead.status." + d.status), "status"),
          cell(number(d.attempts), "attempts", "num"),
          cell(d.reason, "reason"),
          // One dead letter holds the message: only a role that may read bodies opens it.
          cell(may("messages.content") ? button(t("dead.show"), () => openOne(sub, d.id).catch(fail)) : "", "actions"),
        );
        return tr;
      }),
      t("dead.none_here"),
    );
  }

  function letterPath(sub, id) {
    return `/api/dead-letters/${encodeURIComponent(sub)}/${encodeURIComponent(id)}`;
  }

  async function openOne(sub, id) {
    go(sub, id);
    const record = await api(letterPath(sub, id));
    current = record;
    const section = document.getElementById("one");
    const values = {
      id: record.id,
      subscriber: record.subscriber,
      envelope_id: record.envelope_id,
      control_id: record.control_id || "—",
      status: t("dead.status." + record.status),
      dead_lettered_at: when(record.dead_lettered_at),
      holds_patient: record.holds_patient ? t("common.yes") : t("common.no"),
      reason: record.reason,
    };
    for (const [field, value] of Object.entries(values)) {
      section.querySelector(`dd[data-field="${field}"]`).textContent = value;
    }
    fill(
      section.querySelector("#attempts tbody"),
      (record.attempts || []).map((a, i) => {
        const tr = document.createElement("tr");
        let reply = a.reply === null || a.reply === undefined ? "" : a.reply;
        if (typeof reply !== "string") reply = JSON.stringify(reply);
        tr.append(cell(i + 1, "n"), cell(when(a.at), "at"), cell(a.error || "", "outcome"), cell(reply.slice(0, 300), "reply"));
        return tr;
      }),
    );
    const action = document.getElementById("action");
    if (action) {
      // The canonical Bundle holds patient data: it is shown only when asked for, to edit it.
      const edit = document.getElementById("edit");
      if (edit) {
        document.getElementById("bundle").value = "";
        edit.open = false;
      }
      document.getElementById("why").value = "";
      const open = record.status === "open";
      document.getElementById("replay").disabled = !open;
      document.getElementById("discard").disabled = !open;
    }
    section.hidden = false;
    section.scrollIntoView({ block: "start" });
  }

  /** The Bundle is read with the form's "why": one reason for the view and the edit it serves. */
  const loadBundle = document.getElementById("load-bundle");
  if (loadBundle) {
    loadBundle.addEventListener("click", async () => {
      if (!current) return;
      const why = document.getElementById("why").value.trim();
      if (!why) {
        show("error", t("dead.why_for_bundle"));
        document.getElementById("why").focus();
        return;
      }
      try {
        const record = await api(letterPath(current.subscriber, current.id) + "?reason=" + encodeURIComponent(why));
        const bundle = record.envelope ? record.envelope.bundle : null;
        document.getElementById("bundle").value = bundle ? JSON.stringify(bundle, null, 2) : "";
        show("error", "");
      } catch (error) {
        fail(error);
      }
    });
  }

  document.getElementById("status").addEventListener("change", () => {
    if (subscriber) openList(subscriber).catch(fail);
  });

  const form = document.getElementById("action");
  if (form) form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!current) return;
    const action = event.submitter ? event.submitter.value : "replay";
    const why = document.getElementById("why").value.trim();
    if (!why) {
      show("error", t("dead.why_needed"));
      return;
    }
    const body = { why };
    if (action === "replay") {
      const edit = document.getElementById("edit");
      const edited = edit ? document.getElementById("bundle").value.trim() : "";
      if (edit && edit.open && edited) {
        try {
          body.corrected_bundle = JSON.parse(edited);
        } catch (_) {
          show("error", t("dead.bad_json"));
          return;
        }
      }
    } else if (!window.confirm(t("dead.confirm_discard"))) {
      return;
    }
    const path = `/api/dead-letters/${encodeURIComponent(current.subscriber)}/${encodeURIComponent(current.id)}/${action}`;
    try {
      await api(path, { body });
      show("error", "");
      const done = action === "replay" ? t("dead.replayed", { id: current.id }) : t("dead.discarded", { id: current.id });
      show("notice", done);
      await loadSubscribers();
      await openList(current.subscriber);
    } catch (error) {
      fail(error);
    }
  });

  (async () => {
    try {
      await loadSubscribers();
      if (subscriber) await openList(subscriber);
      const id = params.get("id");
      if (subscriber && id) await openOne(subscriber, id);
    } catch (error) {
      fail(error);
    }
  })();
})();
