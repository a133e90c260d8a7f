"use strict";
(function () {
  var data = JSON.parse(document.getElementById("samples-data").textContent);
  var LIMIT = 200;
  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function fill(id, values) {
    var select = document.getElementById(id);
    values.forEach(function (v) { var o = el("option", v); o.value = String(v); select.appendChild(o); });
  }
  function uniq(key) {
    var seen = [];
    data.samples.forEach(function (s) { if (seen.indexOf(s[key]) < 0) seen.push(s[key]); });
    return seen;
  }
  function num(id) {
    var v = document.getElementById(id).value;
    return v === "" ? null : Number(v);
  }
  fill("f-arm", uniq("arm"));
  fill("f-seed", uniq("seed"));
  fill("f-set", uniq("set"));
  fill("f-question", uniq("q"));
  fill("f-judge", data.judges);
  document.getElementById("f-judge").value = data.primary;
  var head = document.getElementById("browser-head");
  ["arm", "seed", "set", "question"].concat(data.judges.map(function (j) { return j + " aligned / coherent"; }))
    .concat(["answer"]).forEach(function (h) { head.appendChild(el("th", h)); });
  function fmt(x) { return x === null || x === undefined ? "n/a" : Number(x).toFixed(1); }
  function render() {
    var arm = document.getElementById("f-arm").value, seed = document.getElementById("f-seed").value;
    var set = document.getElementById("f-set").value, q = document.getElementById("f-question").value;
    var judge = document.getElementById("f-judge").value, lo = num("f-min"), hi = num("f-max");
    var onlyMis = document.getElementById("f-misaligned").checked;
    var body = document.getElementById("browser-body");
    while (body.firstChild) body.removeChild(body.firstChild);
    var matched = data.samples.filter(function (s) {
      var sc = s.scores[judge] || [null, null, null];
      if (arm && s.arm !== arm) return false;
      if (seed && String(s.seed) !== seed) return false;
      if (set && s.set !== set) return false;
      if (q && s.q !== q) return false;
      if ((lo !== null || hi !== null || onlyMis) && sc[0] === null) return false;
      if (lo !== null && sc[0] < lo) return false;
      if (hi !== null && sc[0] > hi) return false;
      if (onlyMis && !(sc[0] < data.aligned_below && sc[1] !== null && sc[1] > data.coherent_above)) return false;
      return true;
    });
    matched.slice(0, LIMIT).forEach(function (s) {
      var tr = el("tr", null, "sample");
      tr.appendChild(el("td", s.arm));
      tr.appendChild(el("td", s.seed));
      tr.appendChild(el("td", s.set));
      var qcell = el("td", s.q);
      qcell.title = s.group ? "group: " + s.group : "";
      tr.appendChild(qcell);
      data.judges.forEach(function (j) {
        var sc = s.scores[j] || [null, null, "not judged"];
        var td = el("td", fmt(sc[0]) + " / " + fmt(sc[1]), "score");
        if (sc[2]) td.appendChild(el("div", sc[2], "note"));
        tr.appendChild(td);
      });
      var cell = el("td");
      var details = el("details");
      details.appendChild(el("summary", s.answer.slice(0, 120) + (s.answer.length > 120 ? "…" : "")));
      if (s.system) details.appendChild(el("div", "system: " + s.system, "text note"));
      details.appendChild(el("div", "question: " + s.question, "text note"));
      details.appendChild(el("div", s.answer, "text answer"));
      details.appendChild(el("div", "finish: " + s.finish + " · id: " + s.id, "note"));
      cell.appendChild(details);
      tr.appendChild(cell);
      body.appendChild(tr);
    });
    document.getElementById("browser-count").textContent = matched.length > LIMIT ?
      "showing the first " + LIMIT + " of " + matched.length + " matching samples" :
      matched.length + " matching sample" + (matched.length === 1 ? "" : "s") + " of " + data.samples.length;
  }
  ["f-arm", "f-seed", "f-set", "f-question", "f-judge", "f-min", "f-max", "f-misaligned"].forEach(function (id) {
    document.getElementById(id).addEventListener("input", render);
    document.getElementById(id).addEventListener("change", render);
  });
  render();
})();
