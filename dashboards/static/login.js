"use strict";
// Where to go once logged in: the server answers the page's "next" back only when it is a path
// of this site (dashboards.app.safe_next), and this page checks again that it stays here.
function sameOriginPath(target) {
  if (typeof target !== "string" || !target.startsWith("/") || /[\\\u0000-\u0020\u007f]/.test(target)) {
    return "/census";
  }
  try {
    const url = new URL(target, location.origin);
    return url.origin === location.origin ? url.pathname + url.search + url.hash : "/census";
  } catch {
    return "/census";
  }
}

document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const message = document.getElementById("message");
  message.textContent = "";
  const r = await fetch("/api/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      name: document.getElementById("name").value,
      password: document.getElementById("password").value,
      next: new URLSearchParams(location.search).get("next"),
    }),
  });
  if (r.ok) {
    const body = await r.json();
    location.href = sameOriginPath(body.next);
  } else if (r.status === 429) {
    message.textContent = `Too many failed logins. Try again in ${r.headers.get("Retry-After")} s.`;
  } else {
    message.textContent = "Wrong name or password.";
  }
});
