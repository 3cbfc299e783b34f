// twiml-transcribe web pages: timestamp seeking, run progress polling, upload checks.
// POSTs from fetch() carry the page's CSRF token (meta csrf-token) as X-CSRF-Token.
// Progressive enhancement only: every action also works as a plain link or form post.
"use strict";

(function () {
  const body = document.body;
  const pollMs = Math.max(500, 1000 * parseFloat(body.dataset.pollSeconds || "2"));
  const ACTIVE = new Set(["queued", "running"]);

  function setStatus(el, status) {
    el.textContent = status;
    el.className = "status status-" + status.replace(/ /g, "-");
  }

  // Signed-in pages carry the session's CSRF token; every POST sends it back as a header.
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrfToken = csrfMeta ? csrfMeta.content : "";

  async function getJson(url, options) {
    const headers = { Accept: "application/json" };
    if (options && options.method === "POST" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
    const resp = await fetch(url, Object.assign({ headers: headers, cache: "no-store" }, options || {}));
    const data = await resp.json().catch(() => ({}));
    return { ok: resp.ok, status: resp.status, data: data };
  }

  // -- timestamps seek the audio player; the current turn is highlighted -----------------
  const player = document.getElementById("player");
  if (player) {
    document.addEventListener("click", (ev) => {
      const link = ev.target.closest("a.ts");
      if (!link) return;
      ev.preventDefault();
      player.currentTime = parseFloat(link.dataset.start);
      player.play().catch(() => {});
    });
    const turns = Array.from(document.querySelectorAll("li.turn"));
    player.addEventListener("timeupdate", () => {
      const t = player.currentTime;
      for (const li of turns) {
        const on = t >= parseFloat(li.dataset.start) && t < parseFloat(li.dataset.end);
        li.classList.toggle("current", on);
        if (on) li.setAttribute("aria-current", "true");
        else li.removeAttribute("aria-current");
      }
    });
  }

  // -- episode page: status, progress, Transcribe, automatic download --------------------
  const statusUrl = body.dataset.statusUrl;
  if (statusUrl) {
    const statusEl = document.getElementById("status");
    const progress = document.getElementById("progress");
    const progressText = document.getElementById("progress-text");
    const button = document.getElementById("transcribe");
    const form = document.getElementById("transcribe-form");
    const errorEl = document.getElementById("run-error");
    const downloads = document.getElementById("downloads");
    const wanted = body.dataset.download;
    let status = body.dataset.status;
    let timer = null;
    let waits = 0;

    function showError(message) {
      errorEl.textContent = message;
      errorEl.hidden = !message;
    }

    function render(data) {
      status = data.status;
      body.dataset.status = status;
      setStatus(statusEl, status);
      const run = data.run;
      const active = ACTIVE.has(status);
      if (button) button.disabled = active;  // no button: not signed in
      progress.hidden = !active;
      if (run && active) {
        progress.max = run.steps_total || 1;
        progress.value = run.steps_done || 0;
        progressText.textContent = (run.steps_done || 0) + " of " + (run.steps_total || "?") +
          " steps" + (run.current_step ? " · " + run.current_step : "");
      } else {
        progressText.textContent = "";
      }
      const failureEl = document.getElementById("failure");
      const failure = data.failure;
      if (failureEl) {
        failureEl.hidden = !(failure && (status === "failed" || status === "given up"));
        if (failure) {
          failureEl.textContent = (status === "given up" ? "Given up" : "Failed") + " after " +
            failure.attempts + " attempt" + (failure.attempts === 1 ? "" : "s") + " (" + failure.kind +
            (failure.step ? ", step " + failure.step : "") + "): " + failure.reason;
        }
      }
      if ((status === "failed" || status === "given up") && !failure) {
        showError("The run failed" + (run && run.failed_step ? " at step " + run.failed_step : "") +
          ". Its logs are in the Dagster UI.");
      } else if (data.dagster === "unavailable" && !data.done) {
        showError("Dagster is not reachable; try again later.");
      } else {
        showError("");
      }
      downloads.hidden = !data.done;
    }

    function finish(data) {
      let delay = 0;
      if (wanted && data.downloads && data.downloads[wanted]) {
        const a = document.createElement("a");
        a.href = data.downloads[wanted];
        a.download = "";
        document.body.appendChild(a);
        a.click();
        a.remove();
        delay = 1500;
      }
      const url = new URL(window.location.href);
      url.searchParams.delete("download");
      window.history.replaceState(null, "", url.toString());
      // Show the new transcript (the download, if any, has started by then).
      setTimeout(() => window.location.reload(), delay);
    }

    async function tick() {
      timer = null;
      let result;
      try {
        result = await getJson(statusUrl);
      } catch (err) {
        result = { ok: false };
      }
      if (result.ok) {
        const before = status;
        render(result.data);
        if (result.data.done && !ACTIVE.has(result.data.status) && (wanted || ACTIVE.has(before) || before === "not started")) {
          finish(result.data);
          return;
        }
      }
      waits += 1;
      const keepWaiting = ACTIVE.has(status) || (wanted && status === "not started" && waits < 10);
      if (keepWaiting || !result.ok) timer = setTimeout(tick, pollMs);
    }

    if (form) form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      button.disabled = true;
      showError("");
      let result;
      try {
        result = await getJson(form.action, { method: "POST" });
      } catch (err) {
        result = { ok: false, status: 0, data: {} };
      }
      if (!result.ok) {
        showError(result.data.error || "Could not start the run (HTTP " + result.status + ").");
        button.disabled = false;
        return;
      }
      render({ status: result.data.run.phase, run: result.data.run, dagster: "ok", done: false });
      if (!timer) timer = setTimeout(tick, pollMs);
    });

    if (ACTIVE.has(status) || wanted) tick();
  }

  // -- episode list: active rows update themselves --------------------------------------
  const rows = Array.from(document.querySelectorAll("tr[data-key]")).filter((r) => ACTIVE.has(r.dataset.status));
  if (rows.length) {
    const refresh = async () => {
      for (const row of rows) {
        if (!ACTIVE.has(row.dataset.status)) continue;
        try {
          const result = await getJson("/api/episodes/" + encodeURIComponent(row.dataset.key));
          if (result.ok) {
            row.dataset.status = result.data.status;
            setStatus(row.querySelector(".status"), result.data.status);
          }
        } catch (err) { /* keep the last status */ }
      }
      if (rows.some((r) => ACTIVE.has(r.dataset.status))) setTimeout(refresh, 2 * pollMs);
    };
    setTimeout(refresh, 2 * pollMs);
  }

  // -- upload form: size check before sending, busy state while sending -----------------
  const upload = document.getElementById("upload-form");
  if (upload) {
    const input = document.getElementById("audio");
    const errorEl = document.getElementById("upload-error");
    const button = document.getElementById("upload-button");
    const maxBytes = parseInt(upload.dataset.maxBytes, 10);
    upload.addEventListener("submit", (ev) => {
      const file = input.files && input.files[0];
      if (file && file.size > maxBytes) {
        ev.preventDefault();
        errorEl.textContent = "This file is larger than the limit of " + Math.floor(maxBytes / 1048576) + " MB.";
        errorEl.hidden = false;
        return;
      }
      button.disabled = true;
      button.textContent = "Uploading…";
    });
  }
})();
