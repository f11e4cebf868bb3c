// cekura-worker console: live updates from the server's event stream. Every value is set with textContent (never
// innerHTML), so text from a job or from Cekura is shown as text whatever it holds.
"use strict";

// The page key: the half of a login session that no cookie carries. The browser sends the console's cookies to every
// port of its host, so another server there holds them; it can't read this origin's storage (scheme, host and port).
// The login form makes a key and sends it with the token; once the login has worked (its answer is the overview), the
// key is kept in localStorage, and each action's form sends it back. The console never sets nor shows it.
(function () {
  const KEPT = "cekura-console-page-key";
  const PENDING = "cekura-console-page-key-pending";

  function storage(name) {
    try {
      return window[name];
    } catch (e) {
      return null; // storage switched off: the token is typed into each form instead
    }
  }

  function newKey() {
    const bytes = new Uint8Array(32);
    window.crypto.getRandomValues(bytes);
    const text = Array.from(bytes, (b) => String.fromCharCode(b)).join("");
    return window.btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  const kept = storage("localStorage");
  const session = storage("sessionStorage");
  const pending = session ? session.getItem(PENDING) : null;
  if (pending !== null) {
    session.removeItem(PENDING);
    if (kept && document.body.dataset.page === "overview" && document.body.dataset.loggedIn === "yes") {
      kept.setItem(KEPT, pending); // the login worked: it answered with the overview, logged in
    }
  }
  document.querySelectorAll("input[data-new-page-key]").forEach((input) => {
    input.form.addEventListener("submit", () => {
      if (kept && session) {
        input.value = newKey();
        session.setItem(PENDING, input.value);
      }
    });
  });
  const key = kept ? kept.getItem(KEPT) || "" : "";
  document.querySelectorAll("input[data-page-key]").forEach((input) => {
    input.value = key;
  });
  if (!key) {
    document.querySelectorAll("[data-without-key]").forEach((row) => {
      row.hidden = false;
      row.querySelectorAll("input").forEach((input) => {
        input.required = true;
      });
    });
  }
  document.querySelectorAll("form[data-logout]").forEach((form) => {
    form.addEventListener("submit", () => kept && kept.removeItem(KEPT));
  });
})();

(function () {
  const FEED_MAX = 50;
  const body = document.body;
  const url = body.dataset.events;
  if (!url || !window.EventSource) {
    return;
  }
  const status = document.getElementById("live-status");

  function setStatus(text, on) {
    if (status) {
      status.textContent = text;
      status.classList.toggle("on", on);
    }
  }

  function cell(tag, text) {
    const element = document.createElement(tag);
    element.textContent = text;
    return element;
  }

  // A job id is shown isolated (<bdi>): a right-to-left or override character in it can't reorder the text around.
  function jobLink(jobId) {
    const link = document.createElement("a");
    link.appendChild(cell("bdi", jobId));
    link.className = "job";
    link.href = "/jobs/" + encodeURIComponent(jobId);
    return link;
  }

  // A {header, rows} table (the server renders the same shape) into <table data-table=name>.
  function renderTable(name, data) {
    const table = document.querySelector('table[data-table="' + name + '"]');
    if (!table || !data) {
      return;
    }
    const headRow = document.createElement("tr");
    data.header.forEach((text) => headRow.appendChild(cell("th", text)));
    table.tHead.replaceChildren(headRow);
    const rows = data.rows.map((row) => {
      const tr = document.createElement("tr");
      row.forEach((text) => tr.appendChild(cell("td", String(text))));
      return tr;
    });
    if (rows.length === 0) {
      const td = cell("td", table.dataset.empty || "");
      td.colSpan = data.header.length;
      td.className = "muted";
      const tr = document.createElement("tr");
      tr.appendChild(td);
      rows.push(tr);
    }
    table.tBodies[0].replaceChildren(...rows);
  }

  function onSummary(data) {
    Object.entries(data.figures || {}).forEach(([name, value]) => {
      document.querySelectorAll('[data-figure="' + name + '"]').forEach((el) => {
        el.textContent = String(value);
      });
    });
    Object.entries(data.tables || {}).forEach(([name, table]) => renderTable(name, table));
  }

  function onOutcomes(data) {
    renderTable("outcomes", data.table);
    const partial = document.getElementById("outcomes-partial");
    if (partial) {
      partial.hidden = !data.partial;
    }
  }

  function feedLine(kind, data) {
    const feed = document.getElementById("feed");
    if (!feed) {
      return;
    }
    const placeholder = feed.querySelector(".muted");
    if (placeholder) {
      placeholder.remove();
    }
    const li = document.createElement("li");
    li.appendChild(cell("span", (data.at || "").replace("T", " ").replace("Z", ""))).className = "when";
    if (kind === "progress") {
      li.appendChild(jobLink(data.job_id));
      const stage = data.current_stage ? ", stage " + data.current_stage : "";
      const asks = data.state === "waiting" ? "; waits for an answer" : "";
      li.appendChild(document.createTextNode(" " + data.kind + ": Cekura status " + data.cekura_status + stage + asks));
    } else if (data.status === "rejected") {
      li.appendChild(document.createTextNode("request rejected (" + (data.requested_job_id || "no job id") + "): " + data.error));
    } else {
      li.appendChild(jobLink(data.job_id));
      const error = data.error ? ": " + data.error : "";
      li.appendChild(document.createTextNode(" " + data.kind + " ended " + data.status + error));
    }
    feed.prepend(li);
    while (feed.children.length > FEED_MAX) {
      feed.lastElementChild.remove();
    }
  }

  function onJob(fields) {
    Object.entries(fields).forEach(([name, value]) => {
      document.querySelectorAll('[data-job="' + name + '"]').forEach((el) => {
        el.textContent = String(value);
      });
    });
    if (fields.state === "finished") {
      document.querySelectorAll("[data-when-active]").forEach((el) => {
        el.hidden = true;
      });
      const note = document.getElementById("finished-note");
      if (note) {
        note.hidden = false;
      }
    }
  }

  function timelineLine(kind, data) {
    const table = document.getElementById("timeline");
    if (!table) {
      return;
    }
    const tr = document.createElement("tr");
    tr.appendChild(cell("td", data.at || ""));
    if (kind === "progress") {
      const stage = data.current_stage ? ", stage " + data.current_stage : "";
      const waiting = data.state === "waiting";
      tr.appendChild(cell("td", waiting ? "waiting" : "progress"));
      const detail = "Cekura status " + data.cekura_status + stage + " (poll " + data.polls + ")";
      tr.appendChild(cell("td", waiting ? detail + "; asks: " + data.question : detail));
    } else {
      tr.appendChild(cell("td", "finished"));
      tr.appendChild(cell("td", data.status + (data.error ? ": " + data.error : "")));
    }
    table.tBodies[0].appendChild(tr);
  }

  const onJobPage = body.dataset.page === "job";
  const source = new EventSource(url);
  source.addEventListener("open", () => setStatus("live", true));
  source.addEventListener("error", () => setStatus("reconnecting", false));
  source.addEventListener("lagged", () => setStatus("catching up", false));
  source.addEventListener("summary", (e) => onSummary(JSON.parse(e.data)));
  source.addEventListener("outcomes", (e) => onOutcomes(JSON.parse(e.data)));
  source.addEventListener("job", (e) => onJob(JSON.parse(e.data)));
  ["progress", "result"].forEach((kind) => {
    source.addEventListener(kind, (e) => {
      const data = JSON.parse(e.data);
      if (onJobPage) {
        timelineLine(kind, data);
      } else {
        feedLine(kind, data);
      }
    });
  });
  window.addEventListener("pagehide", () => source.close());
})();
