// The bed view's patient: who is in the bed (in the header and a panel), their stay, notes and
// handoffs; admit, edit, transfer and discharge for the roles that may ("admit" permission).
"use strict";

const eicuPatient = (() => {
  const CODE = ["full", "DNR", "DNI", "DNR/DNI", "comfort", ""];
  const ISOLATION = ["", "contact", "droplet", "airborne", "protective"];
  const HANDOFF = [["illness", "Illness severity"], ["summary", "Patient summary"],
    ["actions", "Action list"], ["situation", "Situation awareness"], ["synthesis", "Synthesis"]];
  let shown = null;  // the stay drawn, as JSON: drawn again only when it changes
  let bedId = "";
  let busy = false;  // a form is open: the panel waits

  const may = () => !!eicu.me && eicu.me.permissions.includes("admit");
  const panel = () => document.getElementById("patient");
  const error = (text) => document.getElementById("patient-error").replaceChildren(text || "");

  const time = (us) => eicu.dateTimeText(us, false);

  function field(label, input) { return eicu.el("label", { class: "pt-field" }, label, input); }
  function select(name, options, value) {
    const s = eicu.el("select", { name });
    for (const o of options) s.append(eicu.el("option", { value: o }, o || (name === "code_status" ? "not documented" : "none")));
    s.value = value || "";
    return s;
  }
  function input(name, value = "", attrs = {}) { return eicu.el("input", { name, value, ...attrs }); }

  async function send(path, method, body) {
    error("");
    const r = await eicu.api(path, { method, body });
    if (!r.ok) {
      const detail = (await r.json().catch(() => ({}))).detail;
      error(typeof detail === "string" ? detail : `error ${r.status}`);
      return null;
    }
    return r.json();
  }

  function admitForm() {
    const form = eicu.el("form", { id: "admit-form", class: "pt-form" },
      field("MRN", input("mrn", "", { required: "" })), field("Name", input("name", "", { required: "" })),
      field("Sex", select("sex", ["F", "M", "O", "U"], "U")),
      field("Birth date", input("birth_date", "", { placeholder: "YYYY-MM-DD" })),
      field("Allergies", input("allergies", "", { placeholder: "NKDA if none known" })),
      field("Diagnosis", input("diagnosis")), field("Attending", input("attending")),
      field("Code status", select("code_status", CODE, "")),
      field("Isolation", select("isolation", ISOLATION, "")),
      eicu.el("button", { type: "submit" }, "Admit"));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = Object.fromEntries(new FormData(form));
      const patient = { mrn: f.mrn, name: f.name, sex: f.sex, allergies: f.allergies,
        birth_date: f.birth_date || null };
      const body = { patient, diagnosis: f.diagnosis, attending: f.attending,
        code_status: f.code_status, isolation: f.isolation };
      const [site, bed] = bedId.split("/");
      if (await send(`/api/beds/${encodeURIComponent(site)}/${encodeURIComponent(bed)}/admit`, "POST", body)) {
        busy = false; shown = null; refresh();
      }
    });
    return form;
  }

  function editForm(stay) {
    const form = eicu.el("form", { id: "edit-form", class: "pt-form" },
      field("Diagnosis", input("diagnosis", stay.diagnosis)), field("Attending", input("attending", stay.attending)),
      field("Code status", select("code_status", CODE, stay.code_status)),
      field("Isolation", select("isolation", ISOLATION, stay.isolation)),
      field("Allergies", input("allergies", stay.patient.allergies)),
      eicu.el("button", { type: "submit" }, "Save"));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (await send(`/api/encounters/${stay.encounter_id}`, "PATCH", Object.fromEntries(new FormData(form)))) {
        busy = false; shown = null; refresh();
      }
    });
    return form;
  }

  function noteForms(stay) {
    const note = eicu.el("form", { id: "note-form", class: "pt-form" },
      field("Note", eicu.el("textarea", { name: "text", rows: "2" })), eicu.el("button", { type: "submit" }, "Add note"));
    note.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = new FormData(note).get("text");
      if (await send(`/api/encounters/${stay.encounter_id}/notes`, "POST", { kind: "note", text })) loadNotes(stay);
    });
    const handoff = eicu.el("form", { id: "handoff-form", class: "pt-form" },
      ...HANDOFF.map(([key, label]) => field(label, eicu.el("textarea", { name: key, rows: "1" }))),
      eicu.el("button", { type: "submit" }, "Add handoff (I-PASS)"));
    handoff.addEventListener("submit", async (e) => {
      e.preventDefault();
      const fields = Object.fromEntries(new FormData(handoff));
      if (await send(`/api/encounters/${stay.encounter_id}/notes`, "POST", { kind: "handoff", handoff: fields })) {
        handoff.reset(); loadNotes(stay);
      }
    });
    return [note, handoff];
  }

  async function loadNotes(stay) {
    const r = await eicu.api(`/api/encounters/${stay.encounter_id}`);
    if (!r.ok) return;
    const full = await r.json();
    const list = document.getElementById("notes");
    if (!list) return;
    list.replaceChildren(...full.notes.slice().reverse().map((n) => {
      const body = n.kind === "handoff"
        ? HANDOFF.filter(([k]) => n.handoff[k]).map(([k, label]) => eicu.el("div", {}, eicu.el("b", {}, `${label}: `), n.handoff[k]))
        : [eicu.el("div", {}, n.text)];
      return eicu.el("li", { class: `note ${n.kind}`, "data-kind": n.kind },
        eicu.el("span", { class: "note-head" }, `${time(n.time_us)} · ${n.author}${n.kind === "handoff" ? " · handoff" : ""}`), ...body);
    }));
  }

  function draw(stay) {
    const head = document.getElementById("patient-head");
    head.replaceChildren(eicu.patientLine(stay ? { ...stay.patient, code_status: stay.code_status, isolation: stay.isolation } : null));
    const actions = eicu.el("div", { class: "pt-actions" });
    const out = [];
    if (!stay) {
      out.push(eicu.el("p", { class: "pt-none" }, "No patient admitted to this bed."));
      if (may()) {
        const open = eicu.el("button", { id: "admit-open" }, "Admit a patient");
        open.addEventListener("click", () => { busy = true; panel().replaceChildren(admitForm(), errorLine()); });
        actions.append(open);
      }
    } else {
      const p = stay.patient;
      const rows = [["Patient", `${p.name} · ${p.mrn}`], ["Age, sex", `${p.age ?? "?"} · ${p.sex}`],
        ["Admitted", time(stay.admitted_us)], ["Diagnosis", stay.diagnosis || "—"],
        ["Attending", stay.attending || "—"], ["Code status", stay.code_status || "not documented"],
        ["Isolation", stay.isolation || "none"], ["Allergies", p.allergies || "not documented"]];
      out.push(eicu.el("dl", { class: "pt-card" }, ...rows.flatMap(([k, v]) => [eicu.el("dt", {}, k), eicu.el("dd", { "data-field": k }, v)])));
      if (stay.locations.length > 1) {
        out.push(eicu.el("p", { class: "pt-moves" }, "Beds: " + stay.locations.map((l) => `${l.bed} from ${time(l.since_us)}`).join(", ")));
      }
      if (may()) {
        const edit = eicu.el("button", { id: "edit-open" }, "Edit");
        edit.addEventListener("click", () => { busy = true; panel().replaceChildren(editForm(stay), errorLine()); });
        const to = eicu.el("input", { id: "transfer-to", placeholder: "SITE/BED", size: "12" });
        const move = eicu.el("button", { id: "transfer" }, "Transfer");
        move.addEventListener("click", async () => {
          const moved = await send(`/api/encounters/${stay.encounter_id}/transfer`, "POST", { bed: to.value.trim() });
          if (moved) location.href = `/bed?bed=${encodeURIComponent(moved.bed)}`;
        });
        const out_ = eicu.el("button", { id: "discharge" }, "Discharge");
        out_.addEventListener("click", async () => {
          if (!confirm(`Discharge ${p.name} (${p.mrn}) from ${bedId}?`)) return;
          if (await send(`/api/encounters/${stay.encounter_id}/discharge`, "POST")) { shown = null; refresh(); }
        });
        actions.append(edit, " ", to, move, " ", out_);
      }
      out.push(eicu.el("h3", {}, "Notes and handoffs"), eicu.el("ul", { id: "notes", class: "notes" }));
      if (may()) out.push(...noteForms(stay));
    }
    panel().replaceChildren(...out, actions, errorLine());
    if (stay) loadNotes(stay);
  }

  function errorLine() { return eicu.el("p", { id: "patient-error", class: "error", role: "alert" }); }

  async function refresh() {
    const [site, bed] = bedId.split("/");
    const r = await eicu.api(`/api/beds/${encodeURIComponent(site)}/${encodeURIComponent(bed)}`);
    if (r.ok) update((await r.json()).patient);
  }

  // A bed detail arrived (every second): draw the stay again only if it changed and no form is open.
  function update(stay) {
    const key = JSON.stringify(stay || null);
    if (busy || key === shown) return;
    shown = key;
    draw(stay || null);
  }

  return { init(bed) { bedId = bed; }, update };
})();
