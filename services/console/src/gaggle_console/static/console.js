/* Gaggle console: confirmation dialogs, and a rollout's page kept live over Server-Sent Events.
   Hand-written, no library; loaded as a file (the pages' CSP allows scripts from the console only). */
(function () {
  "use strict";

  /* Buttons with data-opens="<dialog id>" open that dialog; data-closes closes its dialog. */
  function dialogs() {
    document.querySelectorAll("[data-opens]").forEach(function (button) {
      button.addEventListener("click", function () {
        var dialog = document.getElementById(button.getAttribute("data-opens"));
        if (dialog && typeof dialog.showModal === "function") {
          dialog.showModal();
        }
      });
    });
    document.querySelectorAll("dialog [data-closes]").forEach(function (button) {
      button.addEventListener("click", function () {
        button.closest("dialog").close();
      });
    });
  }

  var FINAL = ["finished", "aborted"];

  function num(value) {
    return typeof value === "number" && value > 0 ? value : 0;
  }

  /* [done, total, percent]: done is success plus failure, as on the server. */
  function progress(counters, size) {
    var total = num(counters.total) || num(size);
    var done = num(counters.success) + num(counters.failure);
    if (total) {
      done = Math.min(done, total);
    }
    return [done, total, total ? Math.round((100 * done) / total) : 0];
  }

  function setBar(bar, label, counters, size) {
    var p = progress(counters, size);
    bar.max = p[1] || 1;
    bar.value = p[0];
    bar.textContent = p[2] + "%";
    if (label) {
      label.textContent = p[0] + " of " + p[1] + " done (" + p[2] + "%)";
    }
  }

  function live(root) {
    var stateBadge = document.getElementById("state");
    var status = document.getElementById("live");
    var result = document.getElementById("command-result");

    function showState(state, approval, reason) {
      root.setAttribute("data-state", state);
      root.setAttribute("data-approval", approval || "");
      stateBadge.textContent = state;
      stateBadge.className = "badge rollout-" + state;
      var approvalText = document.getElementById("approval");
      if (approvalText) {
        approvalText.textContent = approval || "not needed";
      }
      var why = document.getElementById("reason");
      if (why) {
        why.textContent = reason || "";
        why.hidden = !reason;
      }
      root.querySelectorAll("[data-when]").forEach(function (el) {
        el.hidden = el.getAttribute("data-when").split(" ").indexOf(state) < 0;
      });
      root.querySelectorAll("[data-approval]").forEach(function (el) {
        if (el !== root) {
          el.hidden = approval !== "pending" || FINAL.indexOf(state) >= 0;
        }
      });
    }

    function showCounters(counters) {
      setBar(
        document.getElementById("overall"),
        document.getElementById("overall-label"),
        counters
      );
      root.querySelectorAll("[data-counter]").forEach(function (el) {
        el.textContent = num(counters[el.getAttribute("data-counter")]);
      });
    }

    function showWaves(waves) {
      waves.forEach(function (wave) {
        var item = root.querySelector('[data-wave="' + wave.wave + '"]');
        if (!item) {
          return;
        }
        var counters = wave.counters || {};
        setBar(item.querySelector("progress"), item.querySelector("[data-label]"), counters, wave.size);
        item.querySelector("[data-detail]").textContent =
          num(counters.success) + " success, " + num(counters.failure) + " failure, " +
          num(counters.running) + " running";
      });
    }

    function updated() {
      var n = Number(root.getAttribute("data-updates") || "0") + 1;
      root.setAttribute("data-updates", String(n));
    }

    var source = null;

    function connect() {
      source = new EventSource(root.getAttribute("data-events"));
      source.addEventListener("open", function () {
        status.textContent = "Live: this page follows the rollout as it goes.";
      });
      source.addEventListener("rollout", function (event) {
        var doc = JSON.parse(event.data);
        showState(doc.state, doc.approval, doc.reason);
        showCounters(doc.counters || {});
        showWaves(doc.waves || []);
        updated();
        if (FINAL.indexOf(doc.state) >= 0) {
          source.close();
          status.textContent = "This rollout is " + doc.state + ".";
        }
      });
      source.addEventListener("progressed", function (event) {
        var ev = JSON.parse(event.data);
        showState(ev.state, ev.approval, ev.reason);
        showCounters(ev);
        updated();
      });
      source.addEventListener("error", function () {
        if (source.readyState === EventSource.CLOSED) {
          status.textContent = "Live updates stopped: reload the page to see the rollout now.";
        } else if (FINAL.indexOf(root.getAttribute("data-state")) < 0) {
          status.textContent = "Live updates interrupted; reconnecting…";
        }
      });
    }

    /* Commands are sent without leaving the page; their effect arrives over the stream. */
    root.querySelectorAll("form.command").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var dialog = form.closest("dialog");
        if (dialog) {
          dialog.close();
        }
        var verb = form.getAttribute("action").split("/").pop();
        result.textContent = "Sending " + verb + "…";
        fetch(form.getAttribute("action"), {
          method: "POST",
          body: new URLSearchParams(new FormData(form)),
          credentials: "same-origin",
          redirect: "follow"
        }).then(function (response) {
          if (response.ok) {
            result.textContent = "Sent: " + verb + ".";
            return null;
          }
          return response.text().then(function (html) {
            var page = new DOMParser().parseFromString(html, "text/html");
            var alert = page.querySelector(".alert");
            result.textContent = response.status + ": " +
              (alert ? alert.textContent.trim() : response.statusText);
          });
        }).catch(function () {
          result.textContent = "The console could not be reached; nothing was sent.";
        });
      });
    });

    if (FINAL.indexOf(root.getAttribute("data-state")) < 0 && window.EventSource) {
      connect();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    dialogs();
    var root = document.getElementById("rollout");
    if (root && root.getAttribute("data-events")) {
      live(root);
    }
  });
})();
