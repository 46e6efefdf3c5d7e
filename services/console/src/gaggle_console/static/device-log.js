// The device page's live log: follows the console's copy of the registry's feedback stream
// (Server-Sent Events) and appends one line per detail the device reports. Text only.
"use strict";
(function () {
  var log = document.getElementById("live-log");
  var state = document.getElementById("log-state");
  if (!log || !state || !window.EventSource) {
    return;
  }
  var MAX_LINES = 2000;

  function say(text, name) {
    state.textContent = text;
    state.dataset.state = name;
  }

  function append(text, kind) {
    var line = document.createElement("span");
    line.className = "line " + kind;
    line.textContent = text + "\n";
    log.appendChild(line);
    while (log.childNodes.length > MAX_LINES) {
      log.removeChild(log.firstChild);
    }
    log.scrollTop = log.scrollHeight;
  }

  function lines(kind, event) {
    var data;
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    var status = data.status || {};
    var when = (data.device_time || data.occurred_at || "").slice(0, 19).replace("T", " ");
    var head = when + " action " + data.action_id + (kind === "cancel" ? " cancel " : " ") +
      (status.execution || "") +
      (status.finished && status.finished !== "none" ? " " + status.finished : "");
    if (status.progress && status.progress.of) {
      head += " (" + status.progress.cnt + " of " + status.progress.of + ")";
    }
    append(head, "head");
    (status.details || []).forEach(function (detail) {
      append("  " + detail, "detail");
    });
  }

  var source = new EventSource(log.dataset.source);
  say("Connecting to the live log…", "connecting");
  source.onopen = function () {
    say("Following the device's feedback live.", "open");
  };
  source.addEventListener("action.feedback", function (event) {
    lines("action", event);
  });
  source.addEventListener("cancel.feedback", function (event) {
    lines("cancel", event);
  });
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) {
      say("The live log is not available (signed out, or the registry refused it). " +
        "Reload the page to try again.", "closed");
    } else {
      say("The live log was interrupted; reconnecting…", "connecting");
    }
  };
})();
