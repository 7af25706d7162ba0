"use strict";
const message = document.getElementById("message");

async function load() {
  const r = await eicu.api("/api/users");
  if (r.status === 403) { message.textContent = "Only an admin may manage users."; return; }
  const tbody = document.querySelector("#users tbody");
  tbody.replaceChildren();
  for (const u of await r.json()) {
    const remove = eicu.el("button", {}, "Remove");
    remove.addEventListener("click", () => removeUser(u.name));
    tbody.append(eicu.el("tr", {}, eicu.el("td", {}, u.name), eicu.el("td", {}, u.role),
      eicu.el("td", {}, u.sites === null ? "all" : u.sites.join(", ")),
      eicu.el("td", {}, u.bed || ""), eicu.el("td", {}, remove)));
  }
}

async function removeUser(name) {
  if (!confirm(`Remove ${name}? Their sessions end at once.`)) return;
  const r = await eicu.api(`/api/users/${encodeURIComponent(name)}`, { method: "DELETE" });
  message.textContent = r.ok ? "" : `Not removed: ${(await r.json()).detail}`;
  load();
}

// "a, b" -> ["a", "b"]; blank -> null (every site)
function sitesOf(text) {
  const sites = text.split(",").map((s) => s.trim()).filter((s) => s);
  return sites.length ? sites : null;
}

document.getElementById("add").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const r = await eicu.api("/api/users", { method: "POST", body: {
    name: document.getElementById("new-name").value,
    role: document.getElementById("new-role").value,
    password: document.getElementById("new-password").value,
    sites: sitesOf(document.getElementById("new-sites").value),
    bed: document.getElementById("new-bed").value.trim() || null,
  } });
  const body = await r.json();
  message.textContent = r.ok ? "" : `Not added: ${body.detail}`;
  if (r.ok) { document.getElementById("add").reset(); load(); }
});

eicu.loadMe().then(load);
