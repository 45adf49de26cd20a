/*
 * django-jobqueue: the admin's live pages (the job list, a job's page, the queue overview).
 * No dependencies, no build step; included by admin/django_jobqueue/live.html, configured by
 * the data attributes of its #djq-live element:
 *
 *   data-page    "list", "job" or "overview"
 *   data-url     the staff-only JSON view (django_jobqueue.admin.live)
 *   data-socket  ws/jobqueue/admin/ (django_jobqueue.console), only when the page was served
 *                under ASGI; the list and a job's page then read only when it says a job
 *                changed, and poll the JSON view when it cannot be opened or closes
 *   data-job     a job page's primary key; data-job-id its job id
 *
 * The database is the truth: the socket only says which jobs changed, and the page reads
 * their cells from the JSON view, then replaces the cells in place (never the checkboxes,
 * the selection, or a pause reason being typed). window.djqLive shows the mode ("websocket"
 * or "polling") and how many reads were made.
 */
(function () {
  "use strict";

  var config = document.getElementById("djq-live");
  if (!config || !window.fetch) return;
  var page = config.getAttribute("data-page");
  var url = config.getAttribute("data-url");
  var socketPath = config.getAttribute("data-socket");
  var pollSeconds = 3;
  var timer = null;
  var reading = false;
  var pending = []; // pks of the list to read next
  var pendingAll = true; // ...or every row on the page
  var again = false;
  var state = { mode: null, reads: 0, page: page };
  window.djqLive = state;

  // -- the job list ------------------------------------------------------------------------

  function listRows() {
    // {pk: {row, jobId}} of the rows on the page: the pk from the row's link (or checkbox)
    var rows = {};
    var trs = document.querySelectorAll("#result_list tbody tr");
    for (var i = 0; i < trs.length; i++) {
      var box = trs[i].querySelector("input.action-select");
      var link = trs[i].querySelector("a[href*='/change/']");
      var match = link && /\/(\d+)\/change\//.exec(link.getAttribute("href"));
      var pk = box ? box.value : match && match[1];
      var id = trs[i].querySelector(".field-job_id");
      if (pk) rows[pk] = { row: trs[i], jobId: id ? id.textContent.trim() : null };
    }
    return rows;
  }

  function replace(cell, html) {
    if (cell && cell.innerHTML !== html) cell.innerHTML = html;
  }

  function applyRows(answer) {
    var rows = listRows();
    Object.keys(answer.rows || {}).forEach(function (pk) {
      var shown = rows[pk];
      if (!shown) return;
      var cells = answer.rows[pk].cells;
      shown.row.setAttribute("data-status", answer.rows[pk].status);
      Object.keys(cells).forEach(function (name) {
        replace(shown.row.querySelector(".field-" + name), cells[name]);
      });
    });
  }

  // -- a job's page --------------------------------------------------------------------------

  function applyJob(answer) {
    if (!answer.job) {
      stop(); // the job is gone (pruned): what the page shows is its last state
      return;
    }
    var fields = answer.job.fields;
    Object.keys(fields).forEach(function (name) {
      replace(document.querySelector(".field-" + name + " .readonly"), fields[name]);
    });
  }

  // -- the overview --------------------------------------------------------------------------

  function keyOf(row) {
    return row.classList.contains("djq-total") ? "" : row.getAttribute("data-queue");
  }

  function busy(cell) {
    // a cell the operator is using: focused, or a pause reason typed and not sent
    if (cell.contains(document.activeElement)) return true;
    var inputs = cell.querySelectorAll("input[type=text]");
    for (var i = 0; i < inputs.length; i++) if (inputs[i].value) return true;
    return false;
  }

  function applyOverview(answer) {
    var body = document.querySelector("table.djq-overview tbody");
    if (!body) return;
    var fresh = document.createElement("tbody");
    fresh.innerHTML = answer.rows.join("");
    var shown = {};
    body.querySelectorAll("tr.djq-queue, tr.djq-total").forEach(function (row) {
      shown[keyOf(row)] = row;
    });
    fresh.querySelectorAll("tr.djq-queue, tr.djq-total").forEach(function (row) {
      var old = shown[keyOf(row)];
      if (!old) {
        body.insertBefore(row.cloneNode(true), shown[""] || null);
        return;
      }
      var cells = row.children;
      for (var i = 0; i < cells.length && i < old.children.length; i++) {
        if (!busy(old.children[i])) replace(old.children[i], cells[i].innerHTML);
      }
    });
    var asOf = document.getElementById("djq-as-of");
    if (asOf && answer.as_of) asOf.textContent = new Date(answer.as_of).toLocaleTimeString();
  }

  // -- reading -------------------------------------------------------------------------------

  // The queue database the page shows (django_jobqueue/admin/databases.py): the list's own
  // ?database=, or the one a job's page keeps in _changelist_filters. Primary keys are per
  // database: the live view must read the rows where the page did.
  var here = new URLSearchParams(window.location.search);
  var database =
    here.get("database") ||
    new URLSearchParams(here.get("_changelist_filters") || "").get("database");
  var scope = database ? "&database=" + encodeURIComponent(database) : "";

  function query() {
    if (page === "overview") return "?overview=1";
    if (page === "job") return "?job=" + encodeURIComponent(config.getAttribute("data-job")) + scope;
    var pks = pendingAll ? Object.keys(listRows()) : pending;
    return "?rows=" + pks.join(",") + scope;
  }

  function read(pks) {
    // pks: only these rows (a socket's news); none: all of them
    if (pks) {
      if (!pks.length) return;
      pending = pending.concat(pks);
    } else {
      pendingAll = true;
    }
    if (reading) {
      again = true;
      return;
    }
    reading = true;
    var asked = query();
    pending = [];
    pendingAll = false;
    fetch(url + asked, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("the live view answered " + response.status);
        return response.json();
      })
      .then(function (answer) {
        state.reads += 1;
        if (answer.poll) pollSeconds = answer.poll;
        if (page === "overview") applyOverview(answer);
        else if (page === "job") applyJob(answer);
        else applyRows(answer);
      })
      .catch(function (error) {
        setTimeout(function () { throw error; }); // reported; the next poll tries again
      })
      .then(function () {
        reading = false;
        if (again) {
          again = false;
          read(pendingAll ? undefined : pending.splice(0));
        } else {
          schedule();
        }
      });
  }

  function schedule() {
    clearTimeout(timer);
    if (state.mode === "polling") timer = setTimeout(poll, pollSeconds * 1000);
  }

  function poll() {
    state.mode = "polling";
    if (document.hidden) schedule(); // a tab in the background reads nothing
    else read();
  }

  function stop() {
    state.mode = "stopped";
    clearTimeout(timer);
  }

  // -- the socket ----------------------------------------------------------------------------

  function jobIds() {
    if (page === "job") return [config.getAttribute("data-job-id")];
    var rows = listRows();
    return Object.keys(rows).map(function (pk) { return rows[pk].jobId; }).filter(Boolean);
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var socket;
    try {
      socket = new WebSocket(scheme + window.location.host + socketPath);
    } catch (error) {
      poll();
      return;
    }
    socket.onopen = function () {
      state.mode = "websocket";
      socket.send(JSON.stringify({ jobs: jobIds() }));
    };
    socket.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (!message.changed || !message.changed.length) return;
      if (page === "job") return read();
      var byId = {};
      var rows = listRows();
      Object.keys(rows).forEach(function (pk) { byId[rows[pk].jobId] = pk; });
      read(message.changed.map(function (id) { return byId[id]; }).filter(Boolean));
    };
    socket.onclose = function () {
      if (state.mode !== "stopped") poll(); // the database answers without the socket
    };
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && state.mode === "polling") poll();
  });
  if (socketPath && page !== "overview" && window.WebSocket) connect();
  else {
    state.mode = "polling";
    schedule();
  }
})();
