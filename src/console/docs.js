// Renders /openapi.json as a readable page: operations grouped by tag, then the schemas.
// A small renderer of our own instead of Swagger UI or Scalar: those load their assets from a
// CDN or download them at build time, and the service must work offline.

const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
};

// Inline `code` spans in descriptions; everything else stays text (no HTML injection).
const prose = (text) => {
  const p = el("p", { class: "desc" });
  String(text ?? "").split(/(`[^`]*`)/).forEach((part) => {
    p.append(part.startsWith("`") && part.endsWith("`") && part.length > 1 ? el("code", {}, part.slice(1, -1)) : part);
  });
  return p;
};

const refName = (ref) => ref.split("/").pop();

function typeOf(s) {
  if (!s) return "";
  if (s.$ref) return el("a", { href: `#schema-${refName(s.$ref)}` }, refName(s.$ref));
  if (s.oneOf || s.anyOf) {
    const parts = (s.oneOf || s.anyOf).map(typeOf);
    return el("span", {}, ...parts.flatMap((p, i) => (i ? [" | ", p] : [p])));
  }
  const t = Array.isArray(s.type) ? s.type.filter((x) => x !== "null").join(" | ") : s.type || "object";
  const nullable = Array.isArray(s.type) && s.type.includes("null");
  if (t === "array") return el("span", {}, "[", typeOf(s.items), "]", nullable ? " | null" : "");
  return t + (nullable ? " | null" : "") + (s.format ? ` (${s.format})` : "");
}

function schemaTable(schema) {
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const rows = Object.entries(props).map(([name, p]) =>
    el("tr", {}, el("td", {}, el("code", {}, name), required.has(name) ? " *" : ""), el("td", {}, typeOf(p)), el("td", {}, p.description || "")));
  if (!rows.length) return el("p", {}, "Type: ", typeOf(schema));
  return el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "description"))), el("tbody", {}, rows));
}

function operation(method, path, op) {
  const box = el("section", { class: "op", id: `op-${method}-${path}`, "data-method": method, "data-path": path });
  box.append(el("h3", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), " ", el("code", {}, path), " ", el("span", { class: "summary" }, op.summary || "")));
  if (op.description) box.append(prose(op.description));
  if (op.parameters?.length) {
    box.append(el("h4", {}, "Parameters"), el("table", {}, el("tbody", {}, op.parameters.map((p) =>
      el("tr", {}, el("td", {}, el("code", {}, p.name), p.required ? " *" : ""), el("td", {}, p.in), el("td", {}, typeOf(p.schema)), el("td", {}, prose(p.description)))))));
  }
  const body = op.requestBody?.content?.["application/json"];
  if (body) box.append(el("h4", {}, "Request body"), el("p", {}, typeOf(body.schema)), op.requestBody.description ? prose(op.requestBody.description) : "");
  box.append(el("h4", {}, "Responses"), el("table", {}, el("tbody", {}, Object.entries(op.responses || {}).map(([code, r]) => {
    const content = r.content && Object.entries(r.content)[0];
    return el("tr", {}, el("td", {}, code), el("td", {}, content ? [content[0], " ", typeOf(content[1].schema)] : ""), el("td", {}, prose(r.description)));
  }))));
  return box;
}

async function main() {
  const root = document.getElementById("docs");
  let doc;
  try {
    const resp = await fetch("/openapi.json");
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    doc = await resp.json();
  } catch (e) {
    root.replaceChildren(el("p", { class: "error" }, `Could not load /openapi.json: ${e.message}`));
    return;
  }
  const out = [el("h1", {}, doc.info?.title || "API", " ", el("small", {}, `v${doc.info?.version} · OpenAPI ${doc.openapi}`)), prose(doc.info?.description)];
  const tags = (doc.tags || []).map((t) => t.name);
  const byTag = new Map(tags.map((t) => [t, []]));
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of ["get", "post", "put", "patch", "delete"]) {
      const op = item[method];
      if (!op) continue;
      const tag = op.tags?.[0] || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([method, path, op]);
    }
  }
  for (const [tag, ops] of byTag) {
    if (!ops.length) continue;
    const info = (doc.tags || []).find((t) => t.name === tag);
    out.push(el("h2", {}, tag), info?.description ? prose(info.description) : "", ops.map(([m, p, o]) => operation(m, p, o)));
  }
  const schemas = doc.components?.schemas || {};
  out.push(el("h2", {}, "Schemas"));
  for (const [name, s] of Object.entries(schemas)) {
    out.push(el("section", { class: "schema", id: `schema-${name}` }, el("h3", {}, el("code", {}, name)), s.description ? prose(s.description) : "", schemaTable(s)));
  }
  root.replaceChildren(...out.flat());
}

main();
