"use strict";
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
    }),
  });
  if (r.ok) {
    const next = new URLSearchParams(location.search).get("next") || "/census";
    // only a path on this server: never an absolute or protocol-relative URL
    location.href = next.startsWith("/") && !next.startsWith("//") ? next : "/census";
  } else if (r.status === 429) {
    message.textContent = `Too many failed logins. Try again in ${r.headers.get("Retry-After")} s.`;
  } else {
    message.textContent = "Wrong name or password.";
  }
});
