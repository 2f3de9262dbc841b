/* Passerelle console: what every page shares. Plain JavaScript, no framework, no build step.
   Text comes from the page's catalogue (never from data as HTML: data is set with textContent). */
"use strict";

const Console = (() => {
  const texts = JSON.parse(document.getElementById("texts").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  // What the session's role may do (the server refuses the rest anyway; this hides it).
  const held = new Set(document.querySelector('meta[name="permissions"]').content.split(" "));
  const lang = document.documentElement.lang;

  /** The catalogue's text for key, with {name} placeholders filled from vars. */
  function t(key, vars) {
    let text = Object.prototype.hasOwnProperty.call(texts, key) ? texts[key] : key;
    for (const [name, value] of Object.entries(vars || {})) {
      text = text.split("{" + name + "}").join(String(value));
    }
    return text;
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  /** Fetch the JSON API with the session cookie; POST bodies carry the CSRF token. */
  async function api(path, options) {
    const init = { credentials: "same-origin", headers: { Accept: "application/json" } };
    if (options && options.body !== undefined) {
      init.method = options.method || "POST";
      init.headers["Content-Type"] = "application/json";
      init.headers["X-CSRF-Token"] = csrf;
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      window.location.assign("/console/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
      throw new ApiError(401, t("common.session_ended"));
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      let detail = body && body.detail !== undefined ? body.detail : response.statusText;
      if (body && body.resourceType === "OperationOutcome") {
        detail = (body.issue || []).map((i) => i.diagnostics || i.code).join("; ");
      }
      if (typeof detail !== "string") detail = JSON.stringify(detail);
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  function number(value) {
    return value === null || value === undefined ? "—" : Number(value).toLocaleString(lang);
  }

  function when(epochSeconds) {
    if (epochSeconds === null || epochSeconds === undefined) return t("common.never");
    return new Date(epochSeconds * 1000).toLocaleString(lang);
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 60) return t("common.seconds", { n: Math.round(seconds) });
    if (seconds < 3600) return t("common.minutes", { n: Math.round(seconds / 60) });
    return t("common.hours", { n: (seconds / 3600).toFixed(1) });
  }

  /** A table cell: text (or a node), an optional class, and data-field for tests and styling. */
  function cell(content, field, className) {
    const td = document.createElement("td");
    if (content instanceof Node) td.append(content);
    else td.textContent = content === null || content === undefined ? "" : String(content);
    if (field) td.dataset.field = field;
    if (className) td.className = className;
    return td;
  }

  /** Replace a tbody's rows; one row saying `empty` when there are none. */
  function fill(tbody, rows, empty) {
    const columns = tbody.closest("table").querySelectorAll("thead th").length;
    tbody.replaceChildren(...rows);
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = cell(empty || t("common.none"));
      td.colSpan = columns;
      td.className = "empty";
      tr.append(td);
      tbody.append(tr);
    }
  }

  function show(id, text) {
    const element = document.getElementById(id);
    if (!element) return;
    element.textContent = text || "";
    element.hidden = !text;
  }

  /** Call load now and every `ms` while the page is visible; errors go to #error. */
  function poll(load, ms) {
    let timer = null;
    async function tick() {
      try {
        await load();
        show("error", "");
      } catch (error) {
        if (error.status !== 401) show("error", t("common.error", { detail: error.message }));
      }
      timer = window.setTimeout(tick, ms);
    }
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) window.clearTimeout(timer);
      else { window.clearTimeout(timer); tick(); }
    });
    tick();
  }

  function button(label, onClick, className) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (className) b.className = className;
    b.addEventListener("click", onClick);
    return b;
  }

  // A state of the message store, in words, and how it looks: ok, waiting, bad or out.
  const STATES = {
    queued: [t("state.queued"), "wait"],
    delivered: [t("state.delivered"), "ok"],
    retrying: [t("state.retrying"), "wait"],
    parked: [t("state.parked"), "bad"],
    dead_lettered: [t("state.dead_lettered"), "bad"],
    discarded: [t("state.discarded"), "out"],
    replayed: [t("state.replayed"), "wait"],
    filtered: [t("state.filtered"), "out"],
    routed: [t("state.routed"), "ok"],
    failed: [t("state.failed"), "bad"],
    rejected: [t("state.rejected"), "bad"],
  };

  /** The states a search can ask for, in the order the form lists them. */
  function states() {
    return Object.keys(STATES);
  }

  /** A badge for one state (its word, coloured by kind), with a label before it if given. */
  function badge(state, label) {
    const [word, kind] = STATES[state] || [state === null || state === undefined ? "—" : String(state), "out"];
    const span = document.createElement("span");
    span.className = "badge " + kind;
    span.dataset.state = state || "";
    span.textContent = label ? label + ": " + word : word;
    return span;
  }

  /** Whether the session's role holds a permission (messages.replay…). */
  function may(permission) {
    return held.has(permission);
  }

  return { ApiError, age, api, badge, button, cell, fill, may, number, poll, show, states, t, when };
})();
