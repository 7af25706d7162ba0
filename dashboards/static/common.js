// Shared helpers: the logged-in user, API calls with the CSRF token, freshness formatting.
"use strict";

const eicu = {
  me: null,

  async loadMe() {
    const r = await fetch("/api/me", { credentials: "same-origin" });
    if (r.status === 401) { eicu.toLogin(); throw new Error("not logged in"); }
    eicu.me = await r.json();
    const who = document.getElementById("who");
    if (who) who.textContent = `${eicu.me.name} (${eicu.me.role})`;
    const out = document.getElementById("logout");
    if (out) out.addEventListener("click", eicu.logout);
    return eicu.me;
  },

  toLogin() {
    const next = encodeURIComponent(location.pathname + location.search);
    location.href = `/login?next=${next}`;
  },

  async api(path, options = {}) {
    const opts = { credentials: "same-origin", ...options };
    opts.headers = { ...(options.headers || {}) };
    if (opts.method && opts.method !== "GET") {
      opts.headers["X-CSRF-Token"] = eicu.me ? eicu.me.csrf : "";
      if (opts.body && typeof opts.body !== "string") {
        opts.headers["Content-Type"] = "application/json";
        opts.body = JSON.stringify(opts.body);
      }
    }
    const r = await fetch(path, opts);
    if (r.status === 401) { eicu.toLogin(); throw new Error("not logged in"); }
    return r;
  },

  async logout() {
    await eicu.api("/api/logout", { method: "POST" });
    location.href = "/login";
  },

  wsUrl(path) {
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
  },

  // The engine reads its input late: every value on the page is that much older than it looks
  // live, and the page says so in its #input-delay banner.
  showInputDelay(delayS) {
    const banner = document.getElementById("input-delay");
    if (!banner) return;
    banner.hidden = !delayS;
    banner.textContent = delayS
      ? `Live data is ${eicu.age(delayS)} behind: the engine is reading its input late. Ages include the delay.`
      : "";
  },

  // Remote sites cut off from the hub, or back and still storing their backlog (the census's
  // and the bed view's "links", dashboards.views.site_link_view): one banner per site in
  // #site-links, saying since when (nowUs: the server's clock).
  siteLinkText(site, link, nowUs) {
    const when = (us) => (nowUs - us > 12 * 3600e6 ? eicu.dateTimeText(us) : eicu.timeText(us));
    const ago = (us) => eicu.age(Math.max(0, (nowUs - us) / 1e6));
    const after = "Its beds show their last values; their alarms are judged and paged at the site.";
    if (link.state === "down") {
      if (link.since_us === null || link.since_us === undefined) {
        return `Site ${site}: disconnected; no contact since the hub's feed started. ${after}`;
      }
      return `Site ${site}: disconnected since ${when(link.since_us)} (${ago(link.since_us)} ago). ${after}`;
    }
    if (link.state === "catching_up") {
      const n = Number(link.unstored || 0).toLocaleString("en");
      return `Site ${site}: link back, catching up: its data from ${when(link.since_us)} on is ` +
        `still being stored (${n} messages). Trends and full disclosure fill in as it arrives.`;
    }
    const contact = link.last_contact_us ? `; last contact ${when(link.last_contact_us)}` : "";
    if (link.why === "feed_silent") {
      return `Site ${site}: link state unknown: the hub's site feed has not reported since ` +
        `${when(link.since_us)} (${ago(link.since_us)} ago)${contact}.`;
    }
    return `Site ${site}: link state unknown: the hub's feed cannot read it${contact}.`;
  },

  showSiteLinks(links, nowUs) {
    const box = document.getElementById("site-links");
    if (!box) return;
    const sites = Object.keys(links).sort();
    for (const p of [...box.children]) if (!(p.dataset.site in links)) p.remove();
    for (const site of sites) {
      let p = [...box.children].find((el) => el.dataset.site === site);
      if (!p) {
        p = eicu.el("p", { class: "link-banner", role: "alert", "data-site": site });
        box.append(p);
      }
      if (p.dataset.state !== links[site].state) p.dataset.state = links[site].state;
      const text = eicu.siteLinkText(site, links[site], nowUs);
      if (p.textContent !== text) p.textContent = text;
    }
    box.hidden = !sites.length;
  },

  age(s) {
    if (s === null || s === undefined) return "";
    if (s < 60) return `${Math.round(s)}s`;
    if (s < 3600) return `${Math.round(s / 60)}m`;
    return `${(s / 3600).toFixed(1)}h`;
  },

  // A unit as clinicians read it: the UCUM codes the engine keeps ("Cel", "mm[Hg]") as "°C",
  // "mmHg"; annotations in braces left out ("{breaths}/min" is "/min").
  unitText(unit) {
    const shown = { "Cel": "°C", "mm[Hg]": "mmHg", "cm[H2O]": "cmH2O", "[degF]": "°F" };
    if (!unit) return "";
    if (unit in shown) return shown[unit];
    return unit.replace(/\{[^}]*\}/g, "");
  },

  el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  },

  // A value with its freshness: missing -> "—", reported invalid -> "?", stale -> struck + badge.
  // An auto-registered bed its stream has not yet confirmed (its bed-level technical
  // conditions raise no alarm until then).
  newBadge() {
    return eicu.el("span", { class: "status new", title: "auto-registered bed not yet confirmed by a stream: " +
      "no alarm for missing data, offline, standby or device clock until it is" }, "new");
  },
  valueCell(v) {
    if (!v) return eicu.el("span", { class: "missing", title: "no value received" }, "—");
    if (v.text === null) {
      return eicu.el("span", { class: "invalid", title: "the monitor reported no valid value" }, "?");
    }
    const span = eicu.el("span", {}, eicu.el("span", { class: v.stale ? "value stale" : "value" }, v.text));
    span.append(eicu.el("span", { class: v.stale ? "badge stale" : "badge", title: "age of the value" },
      v.stale ? `stale ${eicu.age(v.age_s)}` : eicu.age(v.age_s)));
    return span;
  },

  // "Video": a call to the bed's cart, with the alarm that led to it; null for a role that may
  // not call.
  // A link to a video consult with the bed: only for users who may call, and only while the
  // bed has a cart registered (``hasCart``, from the census row or the bed detail).
  videoLink(bed, alarmId = null, hasCart = false) {
    if (!hasCart || !eicu.me || !eicu.me.permissions.includes("consult")) return null;
    const [site, name] = bed.split("/").map(encodeURIComponent);
    const query = alarmId ? `?alarm=${encodeURIComponent(alarmId)}` : "";
    return eicu.el("a", { class: "video-link", href: `/consult/${site}/${name}${query}`,
      title: "video consult with the bedside" }, "Video");
  },

  // The user's locale for dates and times (kept in this browser; the browser's own by default),
  // always on the 24-hour clock.
  LOCALES: ["", "en-GB", "en-US", "zh-CN", "ug-CN", "de-DE", "fr-FR", "ru-RU"],
  locale() {
    const chosen = localStorage.getItem("eicu.locale") || "";
    return chosen && eicu.LOCALES.includes(chosen) ? chosen : undefined;
  },
  setLocale(value) {
    if (value) localStorage.setItem("eicu.locale", value); else localStorage.removeItem("eicu.locale");
  },
  timeText(us, seconds = true) {
    if (us === null || us === undefined) return "—";
    const opts = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (seconds) opts.second = "2-digit";
    return new Intl.DateTimeFormat(eicu.locale(), opts).format(new Date(us / 1000));
  },
  dateTimeText(us, seconds = true) {
    if (us === null || us === undefined) return "—";
    const opts = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
      minute: "2-digit", hourCycle: "h23" };
    if (seconds) opts.second = "2-digit";
    return new Intl.DateTimeFormat(eicu.locale(), opts).format(new Date(us / 1000));
  },
  // The locale setting: a select in the page's header (id "locale"), if it has one.
  bindLocale(onChange) {
    const select = document.getElementById("locale");
    if (!select) return;
    for (const code of eicu.LOCALES) {
      select.append(eicu.el("option", { value: code }, code || "browser's own"));
    }
    select.value = eicu.locale() || "";
    select.addEventListener("change", () => { eicu.setLocale(select.value); if (onChange) onChange(); });
  },

  // A patient in one line: name, age and sex, MRN, and what must not be missed: a code status
  // other than full code (or none documented), isolation, allergies.
  patientLine(p) {
    if (!p) return eicu.el("div", { class: "pt pt-none" }, "no patient admitted");
    const age = p.age === null || p.age === undefined ? "" : `${p.age}`;
    const tags = [];
    if (p.code_status !== "full") {
      const text = p.code_status ? p.code_status : "code status?";
      tags.push(eicu.el("span", { class: `pt-tag code${p.code_status ? "" : " unknown"}`,
        title: p.code_status ? "code status" : "no code status documented" }, text));
    }
    if (p.isolation) tags.push(eicu.el("span", { class: "pt-tag isolation", title: "isolation" }, p.isolation));
    if (p.allergies === true || (typeof p.allergies === "string" && p.allergies && p.allergies.toUpperCase() !== "NKDA")) {
      tags.push(eicu.el("span", { class: "pt-tag allergy", title: "allergies documented" }, "allergies"));
    }
    return eicu.el("div", { class: "pt" },
      eicu.el("span", { class: "pt-name" }, p.name),
      eicu.el("span", { class: "pt-meta" }, ` ${age}${p.sex && p.sex !== "U" ? p.sex : ""} · ${p.mrn} `),
      ...tags);
  },

  news2Chip(n) {
    if (!n) return eicu.el("span", { class: "band band-none" }, "NEWS2 —");
    if (n.invalid) return eicu.el("span", { class: "band band-none", title: n.invalid }, "invalid");
    if (n.current === false) {
      // built from values that are stale now: never shown in its band's colour
      const what = n.complete ? `${n.total} ${n.band}` : `≥${n.partial_total} incomplete`;
      return eicu.el("span", { class: "band band-stale",
        title: `stale inputs: ${n.stale_inputs.join(", ")}` +
          (n.age_s === undefined ? "" : `; assembled ${n.age_s} s ago`) },
        `${what} · stale`);
    }
    if (n.complete) {
      return eicu.el("span", { class: `band band-${n.band}` }, `${n.total} ${n.band}${n.rising ? " ↑" : ""}`);
    }
    return eicu.el("span", { class: `band band-${n.min_band}`, title: `missing: ${n.missing.join(", ")}` },
      `≥${n.partial_total} incomplete`);
  },
};
