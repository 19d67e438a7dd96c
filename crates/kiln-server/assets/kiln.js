// Kiln dashboard: makes server-rendered pages live. Pages work without it.
"use strict";

/** The session's CSRF token, for calls to the JSON API. */
function kilnCsrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/** Calls the JSON API as the signed-in user; resolves to the parsed body or throws an Error with the API's message. */
async function kilnApi(method, path, body) {
  const init = { method, headers: { "X-CSRF-Token": kilnCsrf() }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error((data && data.error && data.error.message) || response.statusText);
  }
  return data;
}

/** Renders a timestamp as "3 s ago" / "5 min ago" for elements with data-ago. */
function kilnAgo(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("time[datetime]").forEach((el) => {
    const at = Date.parse(el.getAttribute("datetime"));
    if (!Number.isNaN(at)) el.title = new Date(at).toLocaleString();
  });
});
