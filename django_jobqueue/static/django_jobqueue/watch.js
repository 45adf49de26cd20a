/*
 * django-jobqueue: follow a job live in the browser. No dependencies, no build step.
 *
 *   <script src="{% static 'django_jobqueue/watch.js' %}"></script>
 *   const watcher = DjangoJobqueue.watch(token, {       // token: handle.watch_token()
 *     onUpdate(state) { ... },  // {status, progress, result?, error?}: the current state
 *                               // first, then every change
 *     onDone(state) { ... },    // the last state: completed (result), failed or cancelled (error)
 *     onError(error) { ... },   // {code: "forbidden" | "gone", message}: nothing more will come
 *   });
 *   watcher.close();            // stop following
 *   watcher.mode;               // "websocket" or "polling"
 *
 * It opens ws(s)://<host>/ws/jobqueue/jobs/<token>/ (django_jobqueue.routing), reconnects
 * with exponential backoff and jitter when the socket drops, and polls the JSON status view
 * (django_jobqueue.urls, mounted at /jobqueue/ unless you pass statusUrl) when the browser has
 * no WebSocket, when the socket cannot be opened after `retries` tries, or at once when the
 * server is full: close code 4503 (the process serves JOBQUEUE["MAX_WATCHERS"] sockets) or
 * 4429 (this token or this address holds its share of them). Close code 4403 (no, bad or
 * expired token) and 4404 (job gone) end the watch with onError.
 *
 * The first argument may also be the socket's URL ("wss://..." or "/ws/jobqueue/jobs/<token>/").
 * Options: socketUrl, statusUrl, pollInterval (ms, 1000), retries (5), maxDelay (ms, 15000),
 * transport ("polling" skips the socket).
 */
(function (root) {
  "use strict";

  var FINISHED = { completed: true, failed: true, cancelled: true };
  var FORBIDDEN = 4403;
  var GONE = 4404;
  // The server is full: poll the status view at once instead of reconnecting. 1013 was
  // sent by versions before 4503, which daphne refused (its clients saw 1011).
  var FULL = { 4503: true, 4429: true, 1013: true };
  var SOCKET_PATH = "/ws/jobqueue/jobs/";
  var STATUS_PATH = "/jobqueue/jobs/";

  function call(callback, value) {
    if (typeof callback === "function") {
      try {
        callback(value);
      } catch (error) {
        setTimeout(function () { throw error; });  // reported, but the watch goes on
      }
    }
  }

  function tokenOf(target) {
    var parts = target.split("?")[0].split("/").filter(Boolean);
    return parts[parts.length - 1];
  }

  function socketUrlOf(target) {
    if (/^wss?:\/\//.test(target)) return target;
    var scheme = root.location.protocol === "https:" ? "wss://" : "ws://";
    var path = target.charAt(0) === "/" ? target : SOCKET_PATH + target + "/";
    return scheme + root.location.host + path;
  }

  function watch(target, options) {
    options = options || {};
    if (typeof target !== "string" || !target) {
      throw new TypeError("DjangoJobqueue.watch() needs a watch token or a socket URL");
    }
    var token = tokenOf(target);
    var socketUrl = options.socketUrl || socketUrlOf(target);
    var statusUrl = options.statusUrl || STATUS_PATH + token + "/";
    var pollInterval = options.pollInterval || 1000;
    var retries = options.retries === undefined ? 5 : options.retries;
    var maxDelay = options.maxDelay || 15000;

    var last = null;
    var ended = false;
    var failures = 0;
    var socket = null;
    var timer = null;
    var watcher = { mode: null, close: stop };

    function stop() {
      ended = true;
      clearTimeout(timer);
      if (socket) {
        var open = socket;
        socket = null;
        open.onclose = open.onmessage = open.onerror = null;
        try { open.close(1000); } catch (ignored) { /* already closed */ }
      }
    }

    function update(state) {
      if (ended || !state || typeof state.status !== "string") return;
      var text = JSON.stringify(state);
      if (text === last) return;  // a reconnect or a poll repeats the current state
      last = text;
      call(options.onUpdate, state);
      if (FINISHED[state.status]) {
        stop();
        call(options.onDone, state);
      }
    }

    function fail(code, message) {
      if (ended) return;
      stop();
      call(options.onError, { code: code, message: message });
    }

    function delay(attempt, base) {
      var wait = Math.min(maxDelay, base * Math.pow(2, attempt - 1));
      return wait / 2 + Math.random() * wait / 2;
    }

    function connect() {
      if (ended) return;
      if (options.transport === "polling" || typeof root.WebSocket !== "function") return poll();
      watcher.mode = "websocket";
      try {
        socket = new root.WebSocket(socketUrl);
      } catch (error) {
        return poll();
      }
      socket.onmessage = function (event) {
        failures = 0;
        var state;
        try { state = JSON.parse(event.data); } catch (ignored) { return; }
        update(state);
      };
      socket.onclose = function (event) {
        socket = null;
        if (ended) return;
        if (event.code === FORBIDDEN) return fail("forbidden", "no, bad or expired watch token");
        if (event.code === GONE) return fail("gone", "the job no longer exists");
        if (FULL[event.code]) return poll();
        failures += 1;
        if (failures > retries) {
          failures = 0;
          return poll();
        }
        timer = setTimeout(connect, delay(failures, 500));
      };
    }

    function poll() {
      if (ended) return;
      watcher.mode = "polling";
      var request = new root.XMLHttpRequest();
      request.open("GET", statusUrl);
      request.setRequestHeader("Accept", "application/json");
      request.onload = function () {
        if (ended) return;
        if (request.status === 403) return fail("forbidden", "no, bad or expired watch token");
        if (request.status === 404) return fail("gone", "the job no longer exists");
        var state = null;
        if (request.status === 200) {
          try { state = JSON.parse(request.responseText); } catch (ignored) { state = null; }
        }
        if (state === null) return retry();
        failures = 0;
        update(state);
        if (!ended) timer = setTimeout(poll, pollInterval);
      };
      request.onerror = retry;
      request.send();
    }

    function retry() {
      if (ended) return;
      failures += 1;
      timer = setTimeout(poll, delay(failures, pollInterval));
    }

    connect();
    return watcher;
  }

  root.DjangoJobqueue = root.DjangoJobqueue || {};
  root.DjangoJobqueue.watch = watch;
})(window);
