// cekura-worker console: live updates from the server's event stream. Every value is set with textContent (never
// innerHTML), so text from a job or from Cekura is shown as text whatever it holds.
"use strict";

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
