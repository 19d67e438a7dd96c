// Kiln builds pages (overview and build page): live badges, progress, ETA, timeline,
// events and logs over EventSource; log tools (follow, jump to error, search, load
// earlier). The pages are complete without this file; it only keeps them current.
"use strict";

(function () {
  const CORE_EVENTS = ["build_queued", "build_started", "stage_started", "stage_completed", "stage_failed",
    "build_progress", "heartbeat", "build_completed", "build_failed", "build_cancelled"];
  const STATUS_OF = { build_queued: "queued", build_started: "running", stage_started: "running",
    build_completed: "success", build_failed: "failed", build_cancelled: "cancelled" };
  const TERMINAL = new Set(["success", "failed", "cancelled", "stale"]);
  const LIFECYCLE = new Set(["build_queued", "build_started", "stage_started", "stage_completed", "stage_failed",
    "build_completed", "build_failed", "build_cancelled"]);
  /** Failed connections in a row before falling back to a slow refresh. */
  const MAX_STREAM_ERRORS = 5;
  const FALLBACK_REFRESH_MS = 15000;

  // ---- Words, as kiln-core's eta.rs writes them.
  function remainingWords(ms, overdue) {
    if (overdue) return "taking longer than usual";
    const seconds = Math.ceil(Math.max(0, ms) / 1000);
    if (seconds < 60) return "less than a minute left";
    const minutes = Math.ceil(seconds / 60);
    if (minutes < 60) return "about " + minutes + " min left";
    return "about " + Math.floor(minutes / 60) + " h " + (minutes % 60) + " min left";
  }
  function durationWords(ms) {
    ms = Math.max(0, Math.floor(ms));
    if (ms < 1000) return ms + " ms";
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  // ---- Live state: one line saying whether updates arrive.
  function setLiveState(text) {
    document.querySelectorAll("[data-live-state]").forEach((el) => { el.textContent = text; });
  }

  /** Opens an EventSource with listeners; calls onGiveUp after repeated failures (or without EventSource). */
  function follow(url, listeners, onGiveUp) {
    if (!window.EventSource) { onGiveUp(); return null; }
    const source = new EventSource(url, { withCredentials: true });
    let errors = 0;
    source.onopen = () => { errors = 0; setLiveState("Live"); };
    source.onerror = () => {
      errors += 1;
      if (source.readyState === EventSource.CLOSED || errors >= MAX_STREAM_ERRORS) {
        source.close();
        onGiveUp();
      } else {
        setLiveState("Reconnecting…");
      }
    };
    for (const [type, handler] of Object.entries(listeners)) {
      source.addEventListener(type, (event) => handler(event, source));
    }
    return source;
  }

  function parse(event) {
    try { return JSON.parse(event.data); } catch (_) { return null; }
  }

  // ---- A build's summary (an overview row or the build page): badge, bar, ETA, duration.
  function initClock(root) {
    root.querySelectorAll("[data-duration], [data-eta]").forEach((el) => { el.dataset.base = String(Date.now()); });
  }

  function elapsedOf(el) {
    const base = Number(el.dataset.base || Date.now());
    const start = Number(el.dataset.elapsedMs || el.dataset.durationMs || 0);
    return start + (Date.now() - base);
  }

  function setProgress(root, percent) {
    const bar = root.querySelector("[data-progress-bar]");
    if (!bar) return;
    const value = Math.max(0, Math.min(100, percent));
    bar.setAttribute("aria-valuenow", value.toFixed(0));
    bar.setAttribute("aria-valuetext", value.toFixed(0) + "%");
    const fill = bar.querySelector(".bar");
    if (fill) fill.style.width = value.toFixed(1) + "%";
    const label = root.querySelector("[data-percent]");
    if (label) label.textContent = value.toFixed(0) + "%";
  }

  /** An ended build that did not succeed: the bar stays where it stopped, and says so. */
  function stoppedAt(root, status) {
    const bar = root.querySelector("[data-progress-bar]");
    const label = root.querySelector("[data-percent]");
    if (!bar) return;
    const now = bar.getAttribute("aria-valuenow");
    const words = now === null ? status + ", progress unknown" : status + " at " + now + "%";
    bar.setAttribute("aria-valuetext", words);
    if (label) label.textContent = words;
  }

  function setStatus(root, status) {
    if (root.dataset.status === status) return;
    root.dataset.status = status;
    root.querySelectorAll("[data-badge]").forEach((badge) => {
      badge.className = "badge status-" + status;
      badge.textContent = status;
    });
    const bar = root.querySelector("[data-progress-bar]");
    if (bar) bar.className = "progress status-" + status;
    if (TERMINAL.has(status)) {
      root.querySelectorAll("[data-ticking]").forEach((el) => el.removeAttribute("data-ticking"));
      root.querySelectorAll("[data-eta]").forEach((el) => { el.hidden = true; el.dataset.ended = "1"; });
      if (status === "success") setProgress(root, 100);
      else stoppedAt(root, status);
      // admin.js refreshes the header's unread count (build ends notify admins).
      document.dispatchEvent(new CustomEvent("kiln:build-ended", { detail: { runId: root.dataset.runId, status } }));
    }
  }

  /** Applies one stored event (the stream's JSON) to a build summary. */
  function applyEvent(root, data) {
    const status = STATUS_OF[data.event];
    if (status && !(status === "running" && TERMINAL.has(root.dataset.status))) setStatus(root, status);
    if (typeof data.progress === "number") {
      setProgress(root, data.progress);
      root.querySelectorAll("[data-eta]").forEach((el) => { el.dataset.progress = String(data.progress); });
    }
    if (typeof data.durationMs === "number") {
      root.querySelectorAll("[data-duration]").forEach((el) => {
        if (!el.hasAttribute("data-ticking")) el.textContent = durationWords(data.durationMs);
      });
    }
    const stage = root.querySelector("[data-stage]");
    if (stage && data.stage && data.event === "stage_started") stage.textContent = data.stage;
  }

  /** Once a second: running durations, ETAs, and history-based bars move on. */
  function tick() {
    document.querySelectorAll("[data-duration][data-ticking]").forEach((el) => {
      el.textContent = durationWords(elapsedOf(el));
    });
    document.querySelectorAll("[data-eta]").forEach((el) => {
      if (el.dataset.ended) return;
      const elapsed = elapsedOf(el);
      const progress = Number(el.dataset.progress);
      const median = Number(el.dataset.medianMs || 0);
      let words = null;
      if (el.dataset.progress && progress > 0) {
        words = remainingWords(progress >= 100 ? 0 : elapsed * (100 - progress) / progress, false);
      } else if (median > 0) {
        words = remainingWords(median - elapsed, elapsed > median);
        const root = el.closest("[data-run-id]");
        if (root) setProgress(root, Math.min(99, elapsed * 100 / median));
      }
      if (words) {
        el.textContent = words;
        el.hidden = false;
      }
    });
  }

  /** Fetches this page again and swaps the parts named by selectors (debounced). */
  function refresher(selectors, after) {
    let timer = null;
    let running = false;
    return function schedule(delay) {
      if (timer) return;
      timer = setTimeout(async () => {
        timer = null;
        if (running) { schedule(250); return; }
        running = true;
        try {
          const response = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
          if (!response.ok) return;
          const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
          for (const selector of selectors) {
            const now = document.querySelector(selector);
            const next = fresh.querySelector(selector);
            if (now && next) {
              now.replaceWith(next);
              initClock(next);
              if (after) after(next, now);
            }
          }
        } catch (_) {
          // A failed refresh is retried by the next event or the fallback timer.
        } finally {
          running = false;
        }
      }, delay === undefined ? 150 : delay);
    };
  }

  // ---- Overview
  function initOverview(page) {
    initClock(page);
    const known = new Set([...page.querySelectorAll("tr[data-run-id]")].map((row) => row.dataset.runId));
    const refresh = refresher(["table[data-builds]"], (table) => {
      table.hidden = false;
      const empty = document.querySelector("p.empty");
      if (empty && table.querySelector("tr[data-run-id]")) empty.remove();
      table.querySelectorAll("tr[data-run-id]").forEach((row) => {
        if (!known.has(row.dataset.runId)) { row.classList.add("is-new"); known.add(row.dataset.runId); }
      });
    });
    let fallback = null;
    const giveUp = () => {
      if (fallback) return;
      setLiveState("Updates every 15 s");
      fallback = setInterval(() => refresh(0), FALLBACK_REFRESH_MS);
    };
    const slugs = (page.dataset.streamProjects || "").split(" ").filter(Boolean);
    if (page.hasAttribute("data-refresh") || slugs.length === 0) { giveUp(); return; }
    const after = page.dataset.lastEventId || "";
    const onEvent = (event) => {
      const data = parse(event);
      if (!data || !data.runId) return;
      const row = document.querySelector('tr[data-run-id="' + CSS.escape(data.runId) + '"]');
      if (row) applyEvent(row, data);
      // New builds appear (on the first page); ended ones get their final numbers.
      if ((!row && !page.hasAttribute("data-paged")) || LIFECYCLE.has(data.event) && data.event !== "stage_started") refresh();
    };
    const listeners = {};
    CORE_EVENTS.forEach((type) => { listeners[type] = onEvent; });
    for (const slug of slugs) {
      follow("/api/v1/stream?project=" + encodeURIComponent(slug) + (after ? "&lastEventId=" + after : ""), listeners, giveUp);
    }
  }

  // ---- ANSI colours to spans, as web/ansi.rs renders them.
  function ansiRenderer() {
    let style = {};
    const isPlain = () => !style.fg && !style.bg && !style.bold && !style.dim && !style.it && !style.ul;
    function open(parent) {
      const span = document.createElement("span");
      const classes = [];
      if (typeof style.fg === "number") classes.push("a-f" + style.fg); else if (style.fg) span.style.color = style.fg;
      if (typeof style.bg === "number") classes.push("a-b" + style.bg); else if (style.bg) span.style.background = style.bg;
      if (style.bold) classes.push("a-bold");
      if (style.dim) classes.push("a-dim");
      if (style.it) classes.push("a-it");
      if (style.ul) classes.push("a-ul");
      if (classes.length) span.className = classes.join(" ");
      parent.appendChild(span);
      return span;
    }
    function extended(params, i) {
      if (params[i] === 5 && params.length > i + 1) {
        const n = Math.min(255, params[i + 1]);
        if (n < 16) return [n, 2];
        if (n < 232) {
          const v = n - 16;
          const level = (x) => (x === 0 ? 0 : 55 + x * 40);
          const hex = (x) => level(x).toString(16).padStart(2, "0");
          return ["#" + hex(Math.floor(v / 36)) + hex(Math.floor(v / 6) % 6) + hex(v % 6), 2];
        }
        const g = (8 + (n - 232) * 10).toString(16).padStart(2, "0");
        return ["#" + g + g + g, 2];
      }
      if (params[i] === 2 && params.length > i + 3) {
        const hex = (x) => Math.min(255, x).toString(16).padStart(2, "0");
        return ["#" + hex(params[i + 1]) + hex(params[i + 2]) + hex(params[i + 3]), 4];
      }
      return [null, params.length - i];
    }
    function apply(params) {
      if (params.length === 0) { style = {}; return; }
      for (let i = 0; i < params.length; i++) {
        const c = params[i];
        if (c === 0) style = {};
        else if (c === 1) style.bold = true;
        else if (c === 2) style.dim = true;
        else if (c === 3) style.it = true;
        else if (c === 4) style.ul = true;
        else if (c === 22) { style.bold = false; style.dim = false; }
        else if (c === 23) style.it = false;
        else if (c === 24) style.ul = false;
        else if (c >= 30 && c <= 37) style.fg = c - 30;
        else if (c >= 90 && c <= 97) style.fg = c - 90 + 8;
        else if (c === 39) style.fg = null;
        else if (c >= 40 && c <= 47) style.bg = c - 40;
        else if (c >= 100 && c <= 107) style.bg = c - 100 + 8;
        else if (c === 49) style.bg = null;
        else if (c === 38 || c === 48) {
          const [colour, used] = extended(params, i + 1);
          i += used;
          if (colour !== null) { if (c === 38) style.fg = colour; else style.bg = colour; }
        }
      }
    }
    // Drops control characters but tab (text nodes escape everything else).
    const clean = (text) => text.replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, "");
    /** Renders one line's text (no newline) into `parent`. */
    return function render(text, parent) {
      text = text.replace(/\r+$/, "");
      const cr = text.lastIndexOf("\r");
      if (cr >= 0) text = text.slice(cr + 1);
      let target = isPlain() ? parent : open(parent);
      const pattern = /\u001b(?:\[([0-9;:?]*)([\u0020-\u002f]*)([\u0040-\u007e])|\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|.?)/g;
      let last = 0;
      let match;
      while ((match = pattern.exec(text)) !== null) {
        if (match.index > last) target.appendChild(document.createTextNode(clean(text.slice(last, match.index))));
        last = pattern.lastIndex;
        if (match[3] === "m") {
          apply(match[1] === "" ? [] : match[1].split(/[;:]/).map((p) => parseInt(p, 10) || 0));
          target = isPlain() ? parent : open(parent);
        }
        if (match[0].length === 0) pattern.lastIndex += 1;
      }
      if (last < text.length) target.appendChild(document.createTextNode(clean(text.slice(last))));
    };
  }

  const PREFIX = /^\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d\.\d{3})Z (out |err |kiln) /;

  /** A log line element like the server renders. */
  function lineElement(jobId, number, raw, render) {
    const line = document.createElement("div");
    line.className = "line";
    line.id = "job-" + jobId + "-L" + number;
    const link = document.createElement("a");
    link.className = "ln";
    link.href = "#" + line.id;
    link.textContent = String(number);
    const text = document.createElement("span");
    text.className = "txt";
    let rest = raw;
    let stream = "";
    const prefix = PREFIX.exec(raw);
    if (prefix) {
      link.title = prefix[1];
      stream = prefix[2].trim();
      text.classList.add("s-" + stream);
      rest = raw.slice(prefix[0].length);
    }
    render(rest, text);
    if (stream === "err" || /error|failed/i.test(rest)) line.classList.add("e");
    line.append(link, text);
    return line;
  }

  // ---- Log viewer
  function initLog(section) {
    const jobId = section.dataset.log;
    const lines = section.querySelector("[data-log-lines]");
    const followBox = section.querySelector("[data-follow]");
    let nextLine = Number(section.dataset.nextLine || 1);
    let pending = "";
    let partial = null;
    const render = ansiRenderer();
    if (location.hash.startsWith("#job-") && followBox) followBox.checked = false;
    const stick = () => { if (followBox && followBox.checked) lines.scrollTop = lines.scrollHeight; };
    stick();
    if (followBox) followBox.addEventListener("change", stick);

    // Stop following when the reader scrolls up; start again at the bottom.
    lines.addEventListener("scroll", () => {
      if (!followBox) return;
      const atBottom = lines.scrollHeight - lines.scrollTop - lines.clientHeight < 8;
      if (!atBottom && followBox.checked && lines.dataset.autoscroll !== "1") followBox.checked = false;
    });

    function append(text) {
      pending += text;
      const parts = pending.split("\n");
      pending = parts.pop();
      const fragment = document.createDocumentFragment();
      if (partial) { partial.remove(); partial = null; }
      for (const raw of parts) fragment.appendChild(lineElement(jobId, nextLine++, raw, render));
      if (pending) {
        // The unfinished last line shows now and is redrawn when it grows.
        partial = lineElement(jobId, nextLine, pending, ansiRenderer());
        partial.classList.add("partial");
        fragment.appendChild(partial);
      }
      lines.appendChild(fragment);
      const empty = section.querySelector("[data-log-empty]");
      if (empty) empty.remove();
      lines.dataset.autoscroll = "1";
      stick();
      requestAnimationFrame(() => { lines.dataset.autoscroll = ""; });
    }

    if (section.hasAttribute("data-live")) {
      const url = section.dataset.stream + "?offset=" + encodeURIComponent(section.dataset.offset || "0");
      follow(url, {
        log: (event) => append(event.data),
        end: (_event, source) => { source.close(); if (pending) { append("\n"); } },
      }, () => {});
    }

    // Jump to the first line that looks like an error.
    const jump = section.querySelector("[data-jump-error]");
    if (jump) jump.addEventListener("click", () => {
      const first = lines.querySelector(".line.e");
      if (!first) { jump.textContent = "No errors found"; setTimeout(() => { jump.textContent = "Jump to first error"; }, 2000); return; }
      if (followBox) followBox.checked = false;
      lines.querySelectorAll(".first-error").forEach((el) => el.classList.remove("first-error"));
      first.classList.add("first-error");
      first.scrollIntoView({ block: "center" });
      history.replaceState(null, "", "#" + first.id);
    });

    // Search: highlight matching lines, step through them.
    const search = section.querySelector("[data-log-search]");
    const count = section.querySelector("[data-search-count]");
    let hits = [];
    let current = -1;
    function show(index) {
      if (!hits.length) return;
      if (current >= 0 && hits[current]) hits[current].classList.remove("current");
      current = (index + hits.length) % hits.length;
      hits[current].classList.add("current");
      hits[current].scrollIntoView({ block: "center" });
      if (followBox) followBox.checked = false;
      count.textContent = (current + 1) + " of " + hits.length;
    }
    function find() {
      lines.querySelectorAll(".line.hit").forEach((el) => el.classList.remove("hit", "current"));
      hits = [];
      current = -1;
      const query = search.value.trim().toLowerCase();
      if (!query) { count.textContent = ""; return; }
      lines.querySelectorAll(".line").forEach((line) => {
        const text = line.querySelector(".txt");
        if (text && text.textContent.toLowerCase().includes(query)) { line.classList.add("hit"); hits.push(line); }
      });
      count.textContent = hits.length ? hits.length + " matches" : "no matches";
      if (hits.length) show(0);
    }
    if (search) {
      let timer = null;
      search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(find, 150); });
      search.addEventListener("keydown", (event) => {
        if (event.key === "Enter") { event.preventDefault(); if (hits.length) show(current + (event.shiftKey ? -1 : 1)); else find(); }
      });
      section.querySelector("[data-search-next]").addEventListener("click", () => show(current + 1));
      section.querySelector("[data-search-prev]").addEventListener("click", () => show(current - 1));
    }

    // Load earlier: fetch the part before the first line from the API and prepend it.
    const earlier = section.querySelector("[data-load-earlier]");
    const page = document.querySelector("[data-build]");
    if (earlier && page) earlier.addEventListener("click", async (event) => {
      event.preventDefault();
      const before = Number(earlier.dataset.from);
      const chunk = 64 * 1024;
      const offset = Math.max(0, before - chunk);
      const url = "/api/v1/projects/" + encodeURIComponent(page.dataset.project) + "/builds/" + encodeURIComponent(page.dataset.runId)
        + "/jobs/" + encodeURIComponent(jobId) + "/log?offset=" + offset + "&limit=" + (before - offset);
      try {
        const response = await fetch(url, { credentials: "same-origin" });
        if (!response.ok) throw new Error(response.statusText);
        let text = await response.text();
        let start = offset;
        if (offset > 0) {
          const cut = text.indexOf("\n");
          if (cut < 0) { earlier.dataset.from = String(offset); return; }
          start = offset + new TextEncoder().encode(text.slice(0, cut + 1)).length;
          text = text.slice(cut + 1);
        }
        const raw = text.split("\n");
        raw.pop();
        const firstLine = lines.querySelector(".line");
        const firstNumber = firstLine ? Number(firstLine.querySelector(".ln").textContent) : nextLine;
        const fragment = document.createDocumentFragment();
        const renderEarlier = ansiRenderer();
        raw.forEach((line, index) => fragment.appendChild(lineElement(jobId, firstNumber - raw.length + index, line, renderEarlier)));
        const height = lines.scrollHeight;
        lines.insertBefore(fragment, lines.firstChild);
        lines.scrollTop += lines.scrollHeight - height;
        if (start <= 0) earlier.parentElement.remove(); else earlier.dataset.from = String(start);
      } catch (_) {
        location.href = earlier.href;
      }
    });
  }

  // ---- Build page
  function initBuild(page) {
    initClock(page);
    const refresh = refresher(["[data-timeline-section]", ".build-header dl.facts", ".heading-row .button-row",
      ".build-header [data-progress-block]"]);
    const events = page.querySelector("table[data-events] tbody");
    const seen = new Set([...page.querySelectorAll("tr[data-event-id]")].map((row) => row.dataset.eventId));
    let fallback = null;
    const giveUp = () => {
      if (fallback || TERMINAL.has(page.dataset.status)) return;
      setLiveState("Updates every 15 s");
      fallback = setInterval(() => refresh(0), FALLBACK_REFRESH_MS);
    };
    const onEvent = (event) => {
      const data = parse(event);
      if (!data) return;
      applyEvent(page, data);
      if (data.event !== "heartbeat" && events && !seen.has(String(data.id))) {
        seen.add(String(data.id));
        const row = document.createElement("tr");
        row.dataset.eventId = String(data.id);
        row.dataset.type = data.event;
        const cells = [data.receivedAt || "", data.event + (typeof data.progress === "number" ? " " + Math.round(data.progress) + "%" : ""),
          data.stage || "", data.message || ""];
        cells.forEach((value, index) => {
          const cell = document.createElement("td");
          if (index === 0) cell.appendChild(kilnTime(value));
          else if (index === 1) { const code = document.createElement("code"); code.textContent = value; cell.appendChild(code); } else cell.textContent = value;
          row.appendChild(cell);
        });
        events.appendChild(row);
      }
      if (LIFECYCLE.has(data.event)) refresh();
    };
    if (!TERMINAL.has(page.dataset.status)) {
      const listeners = { end: (_event, source) => { source.close(); setLiveState(""); refresh(); } };
      CORE_EVENTS.forEach((type) => { listeners[type] = onEvent; });
      follow(page.dataset.stream + "?lastEventId=" + encodeURIComponent(page.dataset.lastEventId || "0"), listeners, giveUp);
    }
    const log = document.querySelector("section[data-log]");
    if (log) initLog(log);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const overview = document.querySelector("[data-overview]");
    if (overview) initOverview(overview);
    const build = document.querySelector("[data-build]");
    if (build) initBuild(build);
    setInterval(tick, 1000);
  });
}());
