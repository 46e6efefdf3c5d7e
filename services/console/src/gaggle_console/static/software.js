// Software pages: the upload with its progress bar, and the delete dialog. Text only, no markup
// from the network is ever inserted.
"use strict";
(function () {
  function uploadForm() {
    var form = document.getElementById("upload-form");
    if (!form) {
      return;
    }
    var file = document.getElementById("upload-file");
    var button = document.getElementById("upload-button");
    var box = document.getElementById("upload-status");
    var bar = document.getElementById("upload-progress");
    var label = document.getElementById("upload-progress-label");
    var result = document.getElementById("upload-result");

    function show(percent, text) {
      bar.value = percent;
      bar.textContent = percent + "%";
      label.textContent = text;
    }

    function say(text, failed, link) {
      result.textContent = "";
      var p = document.createElement("p");
      p.className = failed ? "field-error" : "notice";
      p.textContent = text;
      if (link) {
        p.appendChild(document.createTextNode(" "));
        var a = document.createElement("a");
        a.href = link.href;
        a.textContent = link.text;
        p.appendChild(a);
      }
      result.appendChild(p);
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var chosen = file.files && file.files[0];
      if (!chosen) {
        say("Choose an image file first.", true);
        file.focus();
        return;
      }
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.dataset.endpoint);
      xhr.setRequestHeader(form.dataset.csrfHeader, form.dataset.csrf);
      xhr.setRequestHeader("X-Filename", encodeURIComponent(chosen.name));
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable && e.total > 0) {
          var percent = Math.floor((e.loaded * 100) / e.total);
          show(percent, "Uploading " + chosen.name + ": " + percent + "%");
        }
      };
      xhr.upload.onload = function () {
        show(100, "Sent " + chosen.name + " (100%); artifacts is checking it…");
      };
      xhr.onload = function () {
        button.disabled = false;
        var body = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch (e) {
          body = {};
        }
        if (xhr.status === 201) {
          label.textContent = "Uploaded " + chosen.name + " (100%).";
          say("Uploaded " + (body.name || "") + " " + (body.version || "") +
            " (" + (body.trust || "unchecked") + ").", false,
            {href: "/software/" + encodeURIComponent(body.id), text: "Show it"});
        } else {
          label.textContent = "Refused.";
          say("Refused (" + xhr.status + "): " + (body.message || xhr.statusText), true);
        }
      };
      xhr.onerror = function () {
        button.disabled = false;
        label.textContent = "Failed.";
        say("The upload failed: the console could not be reached.", true);
      };
      button.disabled = true;
      result.textContent = "";
      box.hidden = false;
      show(0, "Uploading " + chosen.name + ": 0%");
      xhr.send(chosen);
    });
  }

  function deleteDialog() {
    var dialog = document.getElementById("delete-dialog");
    if (!dialog || typeof dialog.showModal !== "function") {
      return; // the links lead to the confirmation page instead
    }
    var form = document.getElementById("delete-form");
    var name = dialog.querySelector("[data-slot=name]");
    var what = dialog.querySelector("[data-slot=what]");
    var opener = null;
    document.getElementById("delete-keep").addEventListener("click", function () {
      dialog.close();
    });
    dialog.addEventListener("close", function () {
      if (opener) {
        opener.focus();
      }
    });
    document.querySelectorAll("a[data-delete]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        opener = link;
        form.action = "/software/" + encodeURIComponent(link.dataset.delete) + "/delete";
        name.textContent = link.dataset.name;
        what.textContent = link.dataset.used === "yes"
          ? "A device has had this software, so its record stays for the devices' history " +
            "(a soft delete); it is no longer offered or listed."
          : "No device has had this software: it and its image are removed for good.";
        dialog.showModal();
      });
    });
  }

  uploadForm();
  deleteDialog();
})();
