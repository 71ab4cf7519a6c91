/* graphdiff explorer: a forward/backward graph with its values, laid out bottom-up.
 * Plain JavaScript, no library: the data is the JSON in #gd-data (written by
 * visualize/explore.py). The layout is layered (Sugiyama style): forward nodes
 * ranked upwards from the inputs, backward nodes downwards from the loss's seed,
 * rows ordered by barycentres. Scopes are boxes until opened. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("gd-data").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var NODE = {};
  D.nodes.forEach(function (n) { NODE[n.id] = n; n.users = []; });
  D.nodes.forEach(function (n) { n.inputs.forEach(function (i) { if (NODE[i]) NODE[i].users.push(n.id); }); });
  var LEAF = { placeholder: 1, variable: 1, constant: 1 };
  // nodes that carry a gradient: the seeds (dE/dE = 1) and everything computed from them;
  // other backward nodes (ReLU's switch, the pooling argmax) are computed from forward values
  var FROM_SEED = new Set();
  (function () {
    var stack = D.nodes.filter(function (n) { return n.kind === "constant" && n.gradient_of !== undefined; }).map(function (n) { return n.id; });
    while (stack.length) {
      var id = stack.pop();
      if (FROM_SEED.has(id)) continue;
      FROM_SEED.add(id);
      NODE[id].users.forEach(function (u) { stack.push(u); });
    }
  })();
  var S = {
    view: "both", graph: -1, expanded: new Set(), fused: new Set(), selected: null, param: "",
    lit: new Set(), reused: new Set(), matches: new Set(), step: -1, tx: 0, ty: 0, k: 1, layout: null
  };
  var api = { data: D, state: S };
  window.gdExplorer = api;

  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]; }); }
  function num(v) {
    if (v === undefined || v === null) return "";
    if (v === 0) return "0";
    var a = Math.abs(v);
    return (a >= 1e4 || a < 1e-3) ? v.toExponential(3) : v.toPrecision(4).replace(/\.?0+$/, "");
  }
  function isBack(n) { return !!n.backward; }
  // formulas typeset by KaTeX (inlined in the page); its TeX source as code where it is missing
  function tex(src, display) {
    if (window.katex) {
      try { return window.katex.renderToString(src, { throwOnError: false, displayMode: !!display }); } catch (e) { /* below */ }
    }
    return "<code>" + esc(src) + "</code>";
  }
  function texNum(v) {
    var t = num(v), m = /^(-?[\d.]+)e([+-]?\d+)$/.exec(t);
    if (m) t = m[1] + "\\times 10^{" + (+m[2]) + "}";
    return v < 0 ? "(" + t + ")" : t;
  }
  var THUMB_URL = {};
  function thumbURL(th, k, key) {
    var cacheKey = key !== undefined ? key + ":" + k : null;
    if (cacheKey && THUMB_URL[cacheKey]) return THUMB_URL[cacheKey];
    var raw = atob(th.maps[k]), c = document.createElement("canvas"), n = th.w * th.h;
    c.width = th.w; c.height = th.h;
    var ctx = c.getContext("2d"), img = ctx.createImageData(th.w, th.h);
    for (var p = 0; p < n; p++) {
      var r, g, b;
      if (th.channels === 3) { r = raw.charCodeAt(3 * p); g = raw.charCodeAt(3 * p + 1); b = raw.charCodeAt(3 * p + 2); }
      else { r = g = b = raw.charCodeAt(p); }
      img.data[4 * p] = r; img.data[4 * p + 1] = g; img.data[4 * p + 2] = b; img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    var url = c.toDataURL();
    if (cacheKey) THUMB_URL[cacheKey] = url;
    return url;
  }
  // the gradient check of the VJP rule that built a backward node: "ok", "fail" or "none" (not computed);
  // null where there is nothing to check (forward nodes, no values, checks off)
  var CHECKS = D.checks || {};
  function checkOf(n) {
    if (!n.backward || n.kind === "constant" || !D.has_values || !D.check_seconds) return null;
    var c = n.vjp_of !== undefined ? CHECKS[n.vjp_of] : undefined;
    if (!c) return { status: "none", why: n.vjp_of !== undefined ? "not computed" : "sums the gradients reaching a node (no VJP rule of its own)" };
    return checkResult(c);
  }
  // a check's result as a status: "none" where it was skipped (why), else "ok" or "fail"
  function checkResult(c) {
    if (c.skipped) return { status: "none", why: "not computed: " + c.skipped, c: c };
    return { status: c.ok ? "ok" : "fail", c: c };
  }
  api.checkOf = function (id) { return checkOf(NODE[id]); };
  // A graph with many nodes outside any scope opens with them grouped in runs of
  // CHUNK consecutive nodes (boxes like scopes), so that it opens collapsed.
  var CHUNK = 100;
  (function () {
    var loose = D.graph.filter(function (id) {
      var n = NODE[id];
      return !n.scope && !(n.kind === "constant" && n.gradient_of === undefined && n.shape === "()");  // scalars stay hidden
    });
    if (loose.length <= D.max_open_units) return;
    for (var k = 0; k < loose.length; k += CHUNK) {
      var name = "nodes " + (k + 1) + "-" + Math.min(loose.length, k + CHUNK);
      loose.slice(k, k + CHUNK).forEach(function (id) { NODE[id].group = name; });
    }
  })();
  function scopesOf(n) {
    if (n.group) return [n.group];
    if (!n.scope) return [];
    var parts = n.scope.split("/"), out = [];
    for (var k = 1; k <= parts.length; k++) out.push(parts.slice(0, k).join("/"));
    return out;
  }

  /* ------------------------------------------------------------------ the visible graph */
  function currentNodeIds() {
    if (S.graph < 0) return D.graph;
    var pass = D.program.passes[S.graph], ids = pass.nodes.slice();
    if (pass.members && S.fused.size) {
      var out = [];
      ids.forEach(function (id) {
        if (S.fused.has(id) && pass.members[id]) out.push.apply(out, pass.members[id].slice().reverse());
        else out.push(id);
      });
      ids = out;
    }
    return ids;
  }
  function shown(n) {
    if (S.view === "forward" && isBack(n)) return false;
    if (S.view === "backward" && !isBack(n)) return false;
    if (n.kind === "constant" && n.gradient_of === undefined && n.shape === "()") return false;  // scalars: in their user's details
    return true;
  }
  function unitOf(n) {
    var sc = scopesOf(n);
    for (var k = 0; k < sc.length; k++) {
      if (!S.expanded.has(sc[k])) return "S:" + sc[k] + (isBack(n) ? "|b" : "|f");
    }
    return "N:" + n.id;
  }

  function buildGraph() {
    var ids = currentNodeIds(), visible = [], inSet = new Set(), byName = {};
    ids.forEach(function (id) { var n = NODE[id]; if (n && shown(n)) { visible.push(n); inSet.add(id); byName[n.name] = id; } });
    var units = new Map(), order = 0;
    visible.forEach(function (n) {
      var u = unitOf(n);
      if (!units.has(u)) {
        var scope = u[0] === "S" ? u.slice(2, -2) : null;
        units.set(u, { key: u, scope: scope, back: isBack(n), members: [], order: order++, node: scope ? null : n });
      }
      units.get(u).members.push(n);
    });
    var unitOfNode = {};
    units.forEach(function (u) { u.members.forEach(function (n) { unitOfNode[n.id] = u.key; }); });
    var edges = new Map();
    visible.forEach(function (n) {
      n.inputs.forEach(function (i) {
        var src = inSet.has(i) ? i : (NODE[i] && byName[NODE[i].name] !== undefined ? byName[NODE[i].name] : null);
        if (src === null || src === n.id) return;
        var a = unitOfNode[src], b = unitOfNode[n.id];
        if (a === b) return;
        var sn = NODE[src], type = isBack(sn) && isBack(n) ? "back" : (!isBack(sn) && isBack(n) ? "reused" : "fwd");
        var key = a + ">" + b;
        var e = edges.get(key);
        if (!e) { e = { from: a, to: b, type: type, count: 0, pairs: [] }; edges.set(key, e); }
        e.count++; e.pairs.push([src, n.id]);
        if (type !== "reused" && e.type === "reused") e.type = type;
      });
    });
    return { units: units, edges: Array.from(edges.values()), unitOfNode: unitOfNode, visible: visible };
  }

  /* ------------------------------------------------------------------ layout */
  var CW = 7.5, NH = 42, SH = 48, GAP = 18, RANK = 84, STRIP = 6, STRIP_PX = 26;
  // a collapsed forward layer shows the feature maps of its last 4-D value (example 0's first channels)
  function stripOf(u) {
    if (!u.scope || u.back) return null;
    for (var k = u.members.length - 1; k >= 0; k--) {
      var n = u.members[k];
      if (n.thumbs && !LEAF[n.kind] && n.thumbs.what.indexOf("feature maps") === 0) return n;
    }
    return null;
  }
  function unitText(u) {
    if (u.scope) {
      var ops = u.members.filter(function (n) { return !LEAF[n.kind]; }).length;
      var params = u.members.filter(function (n) { return n.kind === "variable"; }).length;
      return [u.scope.split("/").pop() + (u.back ? " (backward)" : ""), ops + (ops === 1 ? " op" : " ops") + (params ? ", " + params + (params === 1 ? " param" : " params") : "") + "  +"];
    }
    var n = u.node, sub = n.shape + " " + n.dtype;
    if (n.stats && n.stats.mean !== undefined) sub = n.shape + "  \u03bc " + num(n.stats.mean) + " \u03c3 " + num(n.stats.std) + (n.stats.zero > 0.001 ? " 0:" + Math.round(100 * n.stats.zero) + "%" : "");
    return [n.label, sub];
  }
  function layout(G) {
    var units = Array.from(G.units.values()), key = {};
    var tallest = 0;
    units.forEach(function (u, k) {
      key[u.key] = k; u.idx = k; u.text = unitText(u); u.w = Math.max(70, CW * Math.max(u.text[0].length, u.text[1].length * 0.85) + 16); u.h = u.scope ? SH : NH;
      u.strip = stripOf(u);
      if (u.strip) { var count = Math.min(STRIP, u.strip.thumbs.maps.length); u.h += STRIP_PX + 6; u.w = Math.max(u.w, count * (STRIP_PX + 3) + 14); }
      tallest = Math.max(tallest, u.h);
    });
    var RANKH = Math.max(RANK, tallest + 36);
    var up = units.map(function () { return []; }), down = units.map(function () { return []; });  // forward: below -> above
    var bdown = units.map(function () { return []; }), bin = units.map(function () { return 0; });
    var fin = units.map(function () { return 0; });
    G.edges.forEach(function (e) {
      var a = key[e.from], b = key[e.to];
      if (e.type === "fwd") { up[a].push(b); down[b].push(a); fin[b]++; }
      else if (e.type === "back") { bdown[a].push(b); bin[b]++; }
    });
    var rank = units.map(function () { return 0; }), queue = [], k2, seen = 0;
    units.forEach(function (u, k) { if (!u.back && fin[k] === 0) queue.push(k); });
    var fcount = fin.slice();
    while (queue.length) {
      var a = queue.pop(); seen++;
      up[a].forEach(function (b) { rank[b] = Math.max(rank[b], rank[a] + 1); if (--fcount[b] === 0) queue.push(b); });
    }
    // leaves sit just below their first reader, not all at the bottom
    units.forEach(function (u, k) {
      if (!u.back && u.node && (u.node.kind === "variable" || u.node.kind === "constant") && up[k].length) {
        var lo = Infinity; up[k].forEach(function (b) { lo = Math.min(lo, rank[b]); });
        rank[k] = Math.max(0, lo - 1);
      }
    });
    var top = 0;
    units.forEach(function (u, k) { if (!u.back) top = Math.max(top, rank[k]); });
    var depth = units.map(function () { return 0; }), bcount = bin.slice();
    queue = [];
    units.forEach(function (u, k) { if (u.back && bin[k] === 0) queue.push(k); });
    while (queue.length) {
      var c = queue.pop();
      bdown[c].forEach(function (b) { depth[b] = Math.max(depth[b], depth[c] + 1); if (--bcount[b] === 0) queue.push(b); });
    }
    var maxDepth = 0;
    units.forEach(function (u, k) { if (u.back) maxDepth = Math.max(maxDepth, depth[k]); });
    var topAll = Math.max(top, maxDepth);
    units.forEach(function (u, k) { if (u.back) rank[k] = topAll - depth[k]; });
    // backward sources other than the seed (ReLU's y, an argmax, a transposed weight: computed
    // from forward values alone) sit just above their first backward reader, not at the top
    units.forEach(function (u, k) {
      var seed = u.node && u.node.kind === "constant";
      if (u.back && bin[k] === 0 && !seed && bdown[k].length) {
        var hi = -Infinity; bdown[k].forEach(function (b) { hi = Math.max(hi, rank[b]); });
        rank[k] = Math.min(topAll, hi + 1);
      }
      u.rank = rank[k];
    });
    // rows, ordered by barycentres of neighbours (a few sweeps)
    var nbr = units.map(function () { return []; });
    G.edges.forEach(function (e) { var a = key[e.from], b = key[e.to]; nbr[a].push(b); nbr[b].push(a); });
    var rows = [];
    units.forEach(function (u) { (rows[u.rank] = rows[u.rank] || []).push(u); });
    for (var r = 0; r < rows.length; r++) rows[r] = (rows[r] || []).sort(function (p, q) { return (p.back - q.back) || (p.order - q.order); });
    function place() { rows.forEach(function (row) { row.forEach(function (u, i) { u.pos = i / Math.max(1, row.length); }); }); }
    place();
    for (var sweep = 0; sweep < 4; sweep++) {
      rows.forEach(function (row) {
        row.forEach(function (u) {
          var s = 0, c2 = 0;
          nbr[u.idx].forEach(function (b) { if (units[b].rank !== u.rank) { s += units[b].pos; c2++; } });
          u.bary = c2 ? s / c2 : u.pos;
        });
        row.sort(function (p, q) { return (p.back - q.back) || (p.bary - q.bary); });
        row.forEach(function (u, i) { u.pos = i / Math.max(1, row.length); });
      });
    }
    var bandF = 0, bandB = 0;
    rows.forEach(function (row) {
      var wf = 0, wb = 0;
      row.forEach(function (u) { if (u.back) wb += u.w + GAP; else wf += u.w + GAP; });
      bandF = Math.max(bandF, wf); bandB = Math.max(bandB, wb);
    });
    var maxRank = rows.length - 1;
    rows.forEach(function (row, r) {
      var wf = 0, wb = 0;
      row.forEach(function (u) { if (u.back) wb += u.w + GAP; else wf += u.w + GAP; });
      var xf = (bandF - wf) / 2, xb = bandF + (bandF ? 90 : 0) + (bandB - wb) / 2;
      row.forEach(function (u) {
        if (u.back) { u.x = xb + u.w / 2; xb += u.w + GAP; } else { u.x = xf + u.w / 2; xf += u.w + GAP; }
        u.y = (maxRank - r) * RANKH + 40;
      });
    });
    return { units: units, byKey: key, width: bandF + (bandB ? bandB + 90 : 0), height: (maxRank + 1) * RANKH + 40 };
  }

  /* ------------------------------------------------------------------ drawing */
  var profileMax = 0;
  if (D.program && D.program.profile) { for (var pk in D.program.profile) profileMax = Math.max(profileMax, D.program.profile[pk]); }
  function heat(t) {
    var f = Math.sqrt(Math.max(0, Math.min(1, t / (profileMax || 1))));
    var r = 255, g = Math.round(245 - 170 * f), b = Math.round(220 - 200 * f);
    return "rgb(" + r + "," + g + "," + b + ")";
  }
  function render() {
    var t0 = performance.now();
    newInPass = new Set(S.graph >= 0 ? D.program.passes[S.graph]["new"] || [] : []);
    var G = buildGraph(), L = layout(G);
    S.graphNow = G; S.layout = L;
    var useProfile = D.program && D.program.profile && S.graph >= 0 && $("gd-profile").checked;
    var html = [];
    L.units.forEach(function (u) {
      var cls = "unit " + (u.scope ? "scope " + (u.back ? "bwd" : "fwd") : "node kind-" + u.node.kind + (u.node.grad_op ? " gradop" : ""));
      var attrs = ' data-unit="' + esc(u.key) + '"' + (u.scope ? ' data-scope="' + esc(u.scope) + '"' : ' data-id="' + u.node.id + '"');
      var fill = "";
      if (useProfile) {
        var tsum = 0; u.members.forEach(function (n) { tsum += D.program.profile[n.id] || 0; });
        fill = ' style="fill:' + heat(tsum) + '"';
        attrs += ' data-seconds="' + tsum + '"';
      }
      var extra = "", subY = u.strip ? 36 : u.h - 10;
      if (u.strip) {
        var th = u.strip.thumbs, count = Math.min(STRIP, th.maps.length);
        extra += '<g class="gd-strip" data-node="' + u.strip.id + '">';
        for (var m = 0; m < count; m++) {
          extra += '<image href="' + thumbURL(th, m, u.strip.id) + '" x="' + (8 + m * (STRIP_PX + 3)) + '" y="' + (u.h - STRIP_PX - 7) + '" width="' + STRIP_PX + '" height="' + STRIP_PX + '" preserveAspectRatio="none"></image>';
        }
        extra += "<title>" + esc(u.strip.name + ": " + th.what + ", channels 0-" + (count - 1)) + "</title></g>";
      }
      var chk = unitCheck(u);
      if (chk) {
        cls += " check-" + chk.status;
        extra += '<g class="gd-check ' + chk.status + '" transform="translate(' + (u.w - 2).toFixed(1) + ',2)"><circle r="7"></circle><text text-anchor="middle" y="4">' +
          (chk.status === "ok" ? "\u2713" : chk.status === "fail" ? "\u2717" : "?") + "</text><title>" + esc(chk.title) + "</title></g>";
      }
      html.push('<g class="' + cls + '"' + attrs + ' transform="translate(' + (u.x - u.w / 2).toFixed(1) + "," + (u.y - u.h / 2).toFixed(1) + ')">' +
        '<rect width="' + u.w.toFixed(1) + '" height="' + u.h + '" rx="' + (u.scope ? 8 : 4) + '"' + fill + '></rect>' +
        '<text class="label" x="8" y="17">' + esc(u.text[0]) + '</text><text class="sub" x="8" y="' + subY + '">' + esc(u.text[1]) + "</text>" + extra +
        "<title>" + esc(u.scope ? u.scope + ": click to open" : u.node.name + " (" + u.node.op + ")") + "</title></g>");
    });
    $("gd-nodes").innerHTML = html.join("");
    var eh = [];
    G.edges.forEach(function (e) {
      var a = L.units[L.byKey[e.from]], b = L.units[L.byKey[e.to]], x1, y1, x2, y2, d;
      if (e.type === "back") { x1 = a.x; y1 = a.y + a.h / 2; x2 = b.x; y2 = b.y - b.h / 2; }
      else if (e.type === "fwd") { x1 = a.x; y1 = a.y - a.h / 2; x2 = b.x; y2 = b.y + b.h / 2; }
      else { x1 = a.x + a.w / 2; y1 = a.y; x2 = b.x - b.w / 2; y2 = b.y; }
      var my = (y1 + y2) / 2;
      d = e.type === "reused" ? "M" + x1 + "," + y1 + "C" + (x1 + 60) + "," + y1 + " " + (x2 - 60) + "," + y2 + " " + x2 + "," + y2
        : "M" + x1 + "," + y1 + "C" + x1 + "," + my + " " + x2 + "," + my + " " + x2 + "," + y2;
      var mk = e.type === "back" ? "gd-arrow-b" : e.type === "reused" ? "gd-arrow-r" : "gd-arrow";
      eh.push('<path class="edge ' + e.type + '" data-from="' + esc(e.from) + '" data-to="' + esc(e.to) + '" d="' + d + '" marker-end="url(#' + mk + ')"><title>' +
        (e.type === "reused" ? "reused forward value" : "") + (e.count > 1 ? " x" + e.count : "") + "</title></path>");
    });
    $("gd-edges").innerHTML = eh.join("");
    renderScopes();
    applyClasses();
    applyTransform();
    api.lastRenderMs = performance.now() - t0;
    $("gd-status").textContent = (S.graph >= 0 ? passSummary() + " \u00b7 " : "") + G.visible.length + " nodes, " + L.units.length + " boxes shown";
  }
  // a box's check mark: red where a VJP rule in it failed its check, green where all it holds passed
  function unitCheck(u) {
    var fail = 0, ok = 0, none = 0;
    u.members.forEach(function (n) {
      var c = checkOf(n);
      if (!c) return;
      if (c.status === "fail") fail++; else if (c.status === "ok") ok++; else none++;
    });
    if (!fail && !ok && !none) return null;
    if (fail) return { status: "fail", title: fail + " gradient check" + (fail > 1 ? "s" : "") + " failed (relative error above " + D.check_fail_above + ")" };
    if (ok && !none) return { status: "ok", title: "gradient check passed" + (ok > 1 ? " (" + ok + " nodes)" : "") };
    if (!u.scope) return { status: "none", title: "gradient check " + checkOf(u.node).why };
    return { status: ok ? "ok" : "none", title: ok + " checked, " + none + " not (accumulations, time budget)" };
  }
  function renderScopes() {
    var open = Array.from(S.expanded).sort();
    $("gd-scopes").innerHTML = open.map(function (s) { return '<span data-collapse="' + esc(s) + '" title="collapse">' + esc(s) + " \u2715</span>"; }).join("");
  }
  var newInPass = new Set();
  function passSummary() {
    if (S.graph < 0) return "";
    var pass = D.program.passes[S.graph], prev = S.graph > 0 ? D.program.passes[S.graph - 1] : null;
    var text = "after " + pass.name + ": " + pass.nodes.length + " nodes";
    if (prev) {
      var folded = (pass["new"] || []).filter(function (id) { return NODE[id].kind === "constant"; }).length;
      text += " (" + pass.removed + " removed, " + (pass["new"] || []).length + " made" + (folded ? ", " + folded + " folded constants" : "") + "; those outlined green)";
    }
    return text;
  }
  function applyClasses() {
    var G = S.graphNow;
    document.querySelectorAll("#gd-nodes g.unit").forEach(function (g) {
      var u = G.units.get(g.getAttribute("data-unit"));
      var lit = false, reused = false, match = false, sel = false;
      u.members.forEach(function (n) {
        if (S.lit.has(n.id)) lit = true;
        if (S.reused.has(n.id)) reused = true;
        if (S.matches.has(n.id)) match = true;
        if (S.selected === n.id) sel = true;
      });
      g.classList.toggle("lit", lit);
      g.classList.toggle("reused", reused && !lit);
      g.classList.toggle("match", match);
      g.classList.toggle("selected", sel && !u.scope);
      g.classList.toggle("dim", S.lit.size > 0 && !lit && !reused);
      g.classList.toggle("new", newInPass.has(u.members[0].id) && u.members.every(function (n) { return newInPass.has(n.id); }));
    });
    document.querySelectorAll("#gd-edges path").forEach(function (p) {
      var a = G.units.get(p.getAttribute("data-from")), b = G.units.get(p.getAttribute("data-to"));
      var on = S.lit.size > 0 && a.members.some(function (n) { return S.lit.has(n.id); }) && b.members.some(function (n) { return S.lit.has(n.id); });
      p.classList.toggle("lit", on);
    });
  }

  /* ------------------------------------------------------------------ pan and zoom */
  function applyTransform() { $("gd-viewport").setAttribute("transform", "translate(" + S.tx + "," + S.ty + ") scale(" + S.k + ")"); }
  function fit() {
    var L = S.layout, box = $("gd-canvas").getBoundingClientRect();
    if (!L || !L.width) return;
    S.k = Math.min(2, Math.max(0.05, Math.min(box.width / (L.width + 40), box.height / (L.height + 20))));
    S.tx = (box.width - L.width * S.k) / 2; S.ty = 10;
    applyTransform();
  }
  // the view a page opens with: everything where it fits at a legible size; else the inputs and
  // the first layers (the bottom, left) at the smallest legible zoom (labels 12 px and up)
  var READABLE_K = 0.92, userMoved = false;
  function initialView() {
    var box = $("gd-canvas").getBoundingClientRect();
    if (!box.width || !box.height) { whenSized(initialView); return; }
    fit();
    var L = S.layout;
    if (!L || !L.width || S.k >= READABLE_K) return;
    S.k = READABLE_K;
    S.tx = L.width * S.k <= box.width ? (box.width - L.width * S.k) / 2 : 10;
    S.ty = box.height - L.height * S.k - 10;
    applyTransform();
  }
  // a page shown in a frame that has no size yet (a notebook output rendered hidden, a
  // collapsed tab) would fit into nothing, at the smallest zoom: it takes its initial view
  // once it has a size, unless the reader has panned or zoomed by then
  function whenSized(then) {
    if (typeof ResizeObserver === "undefined") return;
    var canvas = $("gd-canvas"), watch = new ResizeObserver(function () {
      var b = canvas.getBoundingClientRect();
      if (!b.width || !b.height) return;
      watch.disconnect();
      if (!userMoved) then();
    });
    watch.observe(canvas);
  }
  api.fit = fit; api.initialView = initialView;
  function centerOn(id) {
    var L = S.layout, G = S.graphNow, key = G.unitOfNode[id];
    if (key === undefined) return;
    var u = L.units[L.byKey[key]], box = $("gd-canvas").getBoundingClientRect();
    S.k = Math.max(S.k, 0.6);
    S.tx = box.width / 2 - u.x * S.k; S.ty = box.height / 2 - u.y * S.k;
    applyTransform();
  }
  (function () {
    var canvas = $("gd-canvas"), drag = null;
    canvas.addEventListener("wheel", function (ev) {
      ev.preventDefault(); userMoved = true;
      var box = canvas.getBoundingClientRect(), mx = ev.clientX - box.left, my = ev.clientY - box.top;
      var f = Math.exp(-ev.deltaY * 0.0015), k = Math.max(0.03, Math.min(4, S.k * f));
      S.tx = mx - (mx - S.tx) * k / S.k; S.ty = my - (my - S.ty) * k / S.k; S.k = k;
      applyTransform();
    }, { passive: false });
    canvas.addEventListener("mousedown", function (ev) { userMoved = true; drag = { x: ev.clientX, y: ev.clientY, tx: S.tx, ty: S.ty, moved: false }; });
    window.addEventListener("mousemove", function (ev) {
      if (!drag) return;
      var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; canvas.classList.add("dragging"); }
      S.tx = drag.tx + dx; S.ty = drag.ty + dy; applyTransform();
    });
    window.addEventListener("mouseup", function () { setTimeout(function () { drag = null; }, 0); canvas.classList.remove("dragging"); });
    canvas.addEventListener("click", function (ev) {
      if (drag && drag.moved) return;
      var chip = ev.target.closest("[data-collapse]");
      if (chip) { collapse(chip.getAttribute("data-collapse")); return; }
      var g = ev.target.closest("g.unit");
      if (!g) return;
      if (g.hasAttribute("data-scope")) expand(g.getAttribute("data-scope"));
      else select(+g.getAttribute("data-id"));
    });
    canvas.addEventListener("dblclick", function (ev) {
      var g = ev.target.closest("g.unit");
      if (g && g.hasAttribute("data-id")) { var n = NODE[+g.getAttribute("data-id")]; var sc = scopesOf(n); if (sc.length) collapse(sc[sc.length - 1]); }
    });
  })();

  /* ------------------------------------------------------------------ scopes */
  function expand(scope) { S.expanded.add(scope); render(); }
  function collapse(scope) {
    Array.from(S.expanded).forEach(function (s) { if (s === scope || s.indexOf(scope + "/") === 0) S.expanded.delete(s); });
    render();
  }
  function allScopes() {
    var out = new Set();
    currentNodeIds().forEach(function (id) { var n = NODE[id]; if (n) scopesOf(n).forEach(function (s) { out.add(s); }); });
    return out;
  }
  function reveal(id) {
    var n = NODE[id], changed = false;
    scopesOf(n).forEach(function (s) { if (!S.expanded.has(s)) { S.expanded.add(s); changed = true; } });
    if (!shown(n) && S.view !== "both") { S.view = "both"; $("gd-view").value = "both"; changed = true; }
    if (changed) render();
  }
  api.expand = expand; api.collapse = collapse; api.reveal = reveal;
  api.expandAll = function () { S.expanded = allScopes(); render(); };
  api.collapseAll = function () { S.expanded = new Set(); render(); };

  /* ------------------------------------------------------------------ details */
  function statsTable(st, id) {
    if (!st) return "";
    var rows = [["shape", "(" + st.shape.join(", ") + ")"], ["dtype", st.dtype]];
    var keys = [["mean", "mean"], ["std", "std"], ["min", "min"], ["max", "max"], ["zero", "zeros"], ["norm", st.gradient ? "norm (gradient)" : "norm"]];
    var h = '<table class="gd-stats" data-node="' + id + '">';
    rows.forEach(function (r) { h += "<tr><td>" + r[0] + "</td><td>" + esc(r[1]) + "</td></tr>"; });
    keys.forEach(function (k) {
      if (st[k[0]] === undefined) return;
      var v = st[k[0]], shown = k[0] === "zero" ? (100 * v).toFixed(2) + " %" : num(v);
      h += '<tr><td>' + k[1] + '</td><td data-stat="' + k[0] + '" data-value="' + v + '">' + shown + "</td></tr>";
    });
    if (st.nonfinite) h += "<tr><td>not finite</td><td>" + st.nonfinite + "</td></tr>";
    return h + "</table>";
  }
  function histogram(st) {
    if (!st || !st.hist) return "";
    var c = document.createElement("canvas"), W = 360, H = 56, m = Math.max.apply(null, st.hist) || 1, bw = W / st.hist.length;
    c.width = W; c.height = H + 14;
    var x = c.getContext("2d");
    x.fillStyle = st.gradient ? "#d6604d" : "#4a7fb5";
    st.hist.forEach(function (v, i) { var h = H * v / m; x.fillRect(i * bw + 1, H - h, bw - 2, h); });
    x.fillStyle = "#555"; x.font = "10px sans-serif";
    x.fillText(num(st.hist_lo), 0, H + 12); var t = num(st.hist_hi); x.fillText(t, W - x.measureText(t).width, H + 12);
    return '<img alt="histogram" class="gd-hist" src="' + c.toDataURL() + '">' + (st.hist_step > 1 ? '<div class="gd-hint">histogram of every ' + st.hist_step + "th element</div>" : "");
  }
  function thumbs(th) {
    if (!th) return "";
    var h = '<div class="gd-thumbs" title="' + esc(th.what) + '">';
    th.maps.forEach(function (b64, k) {
      h += '<img src="' + thumbURL(th, k) + '" width="44" height="44" style="image-rendering:pixelated;margin:1px;border:1px solid #ddd">';
    });
    return h + "</div><div class=\"gd-hint\">" + esc(th.what) + (th.step > 1 ? ", every " + th.step + "th pixel" : "") + "</div>";
  }
  function link(id) { var n = NODE[id]; return n ? '<span class="gd-link" data-goto="' + id + '">' + esc(n.name) + "</span> <span class=\"gd-hint\">" + esc(n.op) + "</span>" : "?"; }
  function brief(id) {
    var n = NODE[id], st = n && n.stats;
    return "<li>" + link(id) + (st && st.mean !== undefined ? ' <span class="gd-hint">mean ' + num(st.mean) + ", norm " + num(st.norm) + "</span>" : "") + "</li>";
  }
  function nodeDetails(id) {
    var n = NODE[id], h = "<h3>" + esc(n.name) + "</h3>";
    h += '<div class="gd-hint">' + esc(n.kind) + (n.backward ? " (backward)" : "") + " &middot; op <b>" + esc(n.op) + "</b>" + (n.scope ? " &middot; scope " + esc(n.scope) : "") + "</div>";
    h += "<div>" + esc(n.label) + "</div>";
    if (n.stats) h += "<h4>value</h4>" + statsTable(n.stats, id) + histogram(n.stats) + thumbs(n.thumbs);
    else h += "<div>" + esc(n.shape) + " " + esc(n.dtype) + (D.has_values ? "" : ' <span class="gd-hint">(no feed: no values)</span>') + "</div>";
    if (n.fused) {
      h += "<h4>fused: " + esc(n.fused.text) + "</h4><pre>" + esc(n.fused.inputs.concat(n.fused.steps).join("\n")) + "</pre>";
    }
    var pass = S.graph >= 0 ? D.program.passes[S.graph] : null;
    if (pass && pass.members && pass.members[id]) {
      h += '<button data-fuse="' + id + '">' + (S.fused.has(id) ? "fold members back" : "expand into its " + pass.members[id].length + " members") + "</button>";
    }
    if (n.vjp_of !== undefined) {
      var src = NODE[n.vjp_of];
      h += "<h4>built by the VJP rule of " + link(n.vjp_of) + "</h4>";
      if (src) h += formulaBlock(src.op);
      if (src && src.rule) h += "<pre>" + esc(D.rules[src.rule]) + "</pre>";
    }
    if (n.gradient_of !== undefined) h += "<h4>the gradient dE/d(" + esc(NODE[n.gradient_of] ? NODE[n.gradient_of].name : "?") + ")</h4>";
    if (n.rule && (n.grad_op || n.vjp_of === undefined)) h += "<h4>op " + esc(n.op) + "</h4>" + formulaBlock(n.op) + "<pre>" + esc(D.rules[n.rule]) + "</pre>";
    h += checkDetails(n);
    h += updateDetails(id);
    var gin = n.inputs.filter(function (i) { return FROM_SEED.has(i); });
    var reused = n.inputs.filter(function (i) { return NODE[i] && !FROM_SEED.has(i) && NODE[i].kind !== "constant"; });
    if (n.backward) {
      if (gin.length) h += "<h4>gradient arriving</h4><ul>" + gin.map(brief).join("") + "</ul>";
      h += "<h4>" + (FROM_SEED.has(id) ? "gradient leaving" : "value (from forward values alone)") + "</h4><ul>" + brief(id) + "</ul>";
      if (reused.length) h += "<h4>reused forward values</h4><ul>" + reused.map(brief).join("") + "</ul>";
    } else if (n.inputs.length) {
      h += "<h4>inputs</h4><ul>" + n.inputs.map(brief).join("") + "</ul>";
    }
    var pic = D.pictures[n.vjp_of !== undefined ? n.vjp_of : id];
    if (pic) h += "<h4>element by element</h4>" + picture(pic);
    return h;
  }
  function formulaBlock(op) {
    var F = D.formulas && D.formulas[op];
    if (!F) return "";
    return '<div class="gd-tex" data-tex-op="' + esc(op) + '"><div class="gd-tex-row"><span class="gd-tex-tag">forward</span>' + tex(F.forward, true) +
      '</div><div class="gd-tex-row"><span class="gd-tex-tag">VJP</span>' + tex(F.vjp, true) + "</div></div>";
  }
  function checkDetails(n) {
    var c = checkOf(n);
    if (!c && !n.backward && CHECKS[n.id]) c = checkResult(CHECKS[n.id]);  // a forward node: its own rule's check
    if (!c) return "";
    var h = '<h4>gradient check</h4><div class="gd-checkbox ' + c.status + '" data-check="' + c.status + '">';
    if (c.status === "none") return h + "not computed: " + esc(String(c.why).replace(/^not computed: /, "")) + "</div>";
    var r = c.c;
    h += (c.status === "ok" ? "\u2713 passed" : "\u2717 FAILED") + ": relative error <b data-error=\"" + r.error + "\">" + (r.error === null ? "not finite" : r.error.toExponential(2)) + "</b>" +
      " (marked red above " + D.check_fail_above + ")" +
      tex("\\begin{gathered} a = \\langle \\mathrm{VJP}(w), u \\rangle = " + texNum(r.analytic) + " \\\\ n = \\frac{\\langle w, f(x + \\epsilon u) - f(x - \\epsilon u) \\rangle}{2 \\epsilon} = " + texNum(r.numeric) +
        " \\\\ \\frac{\\lvert a - n \\rvert}{\\max(\\lvert a \\rvert, \\lvert n \\rvert)} = " + (r.error === null ? "\\infty" : texNum(r.error)) + " \\end{gathered}", true) +
      (r.inputs && r.inputs.length > 1 ? '<table class="gd-stats">' + r.inputs.map(function (i) {
        return "<tr><td>" + esc(i.input) + '</td><td data-input-error="' + i.error + '">' + (i.error === null ? "not finite" : i.error.toExponential(2)) + "</td></tr>"; }).join("") + "</table>" : "") +
      '<div class="gd-hint">float64 central difference of ' + esc(NODE[n.vjp_of !== undefined ? n.vjp_of : n.id].name) + " at this batch, for each input (" + esc((r.wrt || []).join(", ")) + ") along a random sparse direction u, with a random cotangent w; the largest error counts" + (r.tries > 1 ? " (a second direction was tried)" : "") + "</div>";
    return h + "</div>";
  }
  function updateOf(id) {
    if (!D.update) return null;
    return D.update.params.filter(function (p) { return p.id === id || p.grad === id; })[0] || null;
  }
  function updateDetails(id) {
    var u = updateOf(id);
    if (!u) return "";
    var U = D.update, h = '<h4>one SGD step on this batch</h4><div class="gd-update" data-param="' + esc(u.name) + '">';
    h += tex("v \\leftarrow " + texNum(U.momentum) + "\\, v - " + texNum(U.lr) + "\\, (" + texNum(U.weight_decay) + "\\, w + \\tfrac{\\partial E}{\\partial w}), \\quad w' = w + v", true);
    h += '<div>update/weight ratio ' + tex("\\lVert v \\rVert / \\lVert w \\rVert = " + (u.ratio === null ? "?" : texNum(u.ratio))) + ' <span data-ratio="' + u.ratio + '"></span></div>';
    [["before", "w (before)"], ["after", "w' (after)"], ["v", "the step v"]].forEach(function (k) {
      h += '<div class="gd-update-part" data-part="' + k[0] + '"><b>' + k[1] + "</b> " + '<span class="gd-hint">mean ' + num(u[k[0]].mean) + ", std " + num(u[k[0]].std) + ", norm " + num(u[k[0]].norm) + "</span>" +
        histogram(u[k[0]]) + (u["thumbs_" + k[0]] ? thumbs(u["thumbs_" + k[0]]) : "") + "</div>";
    });
    if (u.log_ratio) {
      h += '<div class="gd-update-part" data-part="ratio"><b>update/weight ratio, weight by weight</b> ' + tex("\\log_{10} \\lvert v_i \\rvert / \\lvert w_i \\rvert") +
         ' <span class="gd-hint">mean ' + num(u.log_ratio.mean) + ": a geometric mean ratio of " + num(Math.pow(10, u.log_ratio.mean)) + "</span>" + histogram(u.log_ratio) + "</div>";
    }
    return h + '<div class="gd-hint">' + esc(U.source) + (u.momentum_buffer ? ", its momentum buffer" : ", momentum buffer zero (a first step)") + "</div></div>";
  }
  function select(id) {
    S.selected = id;
    $("gd-details").innerHTML = nodeDetails(id);
    applyClasses();
  }
  api.select = select;
  $("gd-panel").addEventListener("click", function (ev) {
    var g = ev.target.closest("[data-goto]");
    if (g) { var id = +g.getAttribute("data-goto"); reveal(id); select(id); centerOn(id); return; }
    var f = ev.target.closest("[data-fuse]");
    if (f) { var fid = +f.getAttribute("data-fuse"); if (S.fused.has(fid)) S.fused.delete(fid); else S.fused.add(fid); render(); select(fid); }
  });

  /* ------------------------------------------------------------------ element-level pictures */
  function grid(name, M, cls) {
    var h = '<table class="gd-grid ' + (cls || "") + '" data-grid="' + name + '"><caption>' + name + "</caption>";
    M.forEach(function (row, i) {
      h += "<tr>" + row.map(function (v, j) { return '<td data-i="' + i + '" data-j="' + j + '" data-value="' + v + '">' + num(v) + "</td>"; }).join("") + "</tr>";
    });
    return h + "</table>";
  }
  function picture(p) {
    var h = '<div class="gd-picture" data-kind="' + p.kind + '"><div class="gd-hint">' + esc(p.caption) + "</div>";
    if (p.kind === "conv") {
      h += grid("X", p.X) + grid("W", p.W) + grid("Y", p.Y);
      if (p.dE) h += "<br>" + grid("dE", p.dE) + grid("dX", p.dX);
      h += '<div class="gd-formula">hover Y<sub>ij</sub>: the inputs it reads; hover dX<sub>ij</sub>: the dE<sub>(i-a)(j-b)</sub> it gathers</div>';
    } else if (p.kind === "relu") {
      h += '<table class="gd-grid" data-grid="relu"><tr><td>x</td>' + p.x.map(function (v, k) { return '<td data-k="' + k + '">' + num(v) + "</td>"; }).join("") + "</tr>";
      h += "<tr><td>switch</td>" + p.switch.map(function (s) { return '<td class="' + (s ? "" : "closed") + '">' + (s ? "open" : "closed") + "</td>"; }).join("") + "</tr>";
      h += "<tr><td>y</td>" + p.y.map(function (v) { return "<td>" + num(v) + "</td>"; }).join("") + "</tr>";
      if (p.g_in) {
        h += "<tr><td>dE/dy</td>" + p.g_in.map(function (v) { return "<td>" + num(v) + "</td>"; }).join("") + "</tr>";
        h += "<tr><td>dE/dx</td>" + p.g_out.map(function (v, i) { return '<td data-k="' + i + '" class="' + (p.switch[i] ? "hl" : "closed") + '">' + num(v) + "</td>"; }).join("") + "</tr>";
      }
      h += '</table><div class="gd-formula">hover x<sub>k</sub> or dE/dx<sub>k</sub>: the switch applied to it</div>';
    } else if (p.kind === "lrn") {
      var rows = [["channel l", p.x.map(function (v, k) { return k; })], ["x", p.x], ["scale", p.scale], ["y", p.y]];
      if (p.dx) rows.push(["dE/dy", p.dy], ["S\u1d40(dy\u00b7y/scale)", p.st], ["dE/dx", p.dx]);
      h += '<table class="gd-grid" data-grid="lrn">' + rows.map(function (r) {
        return "<tr><td>" + esc(r[0]) + "</td>" + r[1].map(function (v, k) { return '<td data-k="' + k + '">' + (r[0] === "channel l" ? v : num(v)) + "</td>"; }).join("") + "</tr>";
      }).join("") + '</table><div class="gd-formula">hover a channel: the refactored gradient with its numbers</div>';
    } else if (p.kind === "pool") {
      var maxes = {};
      p.windows.forEach(function (w) { maxes[w.argmax[0] + "," + w.argmax[1]] = 1; });
      h += grid("X", p.X).replace(/<td data-i="(\d+)" data-j="(\d+)"/g, function (m, i, j) { return maxes[i + "," + j] ? m.replace("<td", '<td class="max"') : m; });
      h += '<table class="gd-grid" data-grid="windows"><caption>windows</caption><tr><td>window</td><td>max</td><td>argmax</td>' + (p.dX ? "<td>dE</td>" : "") + "</tr>";
      p.windows.forEach(function (w, k) { h += '<tr data-window="' + k + '"><td>(' + w.i + "," + w.j + ")</td><td>" + num(w.max) + "</td><td>(" + w.argmax.join(",") + ")</td>" + (p.dX ? "<td>" + num(w.dE) + "</td>" : "") + "</tr>"; });
      h += "</table>";
      if (p.dX) h += grid("dX", p.dX);
      h += '<div class="gd-formula">hover a window: its inputs, and the one input its gradient is routed to</div>';
    }
    return h + "</div>";
  }
  $("gd-panel").addEventListener("mouseover", function (ev) {
    var td = ev.target.closest("td, tr[data-window]"), pic = ev.target.closest(".gd-picture");
    if (!td || !pic) return;
    var P = D.pictures[pictureIdOf()];
    if (!P) return;
    pic.querySelectorAll(".hl, .hl2").forEach(function (c) { if (c.closest("[data-grid=relu]")) return; c.classList.remove("hl"); c.classList.remove("hl2"); });
    var table = td.closest("table"), gname = table && table.getAttribute("data-grid"), f = pic.querySelector(".gd-formula");
    function cell(g, i, j) { return pic.querySelector('table[data-grid="' + g + '"] td[data-i="' + i + '"][data-j="' + j + '"]'); }
    var i = +td.getAttribute("data-i"), j = +td.getAttribute("data-j"), a, b, terms = [];
    if (P.kind === "conv" && gname === "Y") {
      td.classList.add("hl");
      for (a = 0; a < P.m; a++) for (b = 0; b < P.m; b++) {
        cell("X", i + a, j + b).classList.add("hl"); cell("W", a, b).classList.add("hl2");
        if (terms.length < 4) terms.push(texNum(P.W[a][b]) + "\\cdot" + texNum(P.X[i + a][j + b]));
      }
      setTex(f, "Y_{" + i + j + "} = \\sum_{ab} W_{ab} X_{(" + i + "+a)(" + j + "+b)} = " + terms.join(" + ") + (P.m * P.m > 4 ? " + \\dots" : "") + " = " + texNum(P.Y[i][j]));
    } else if (P.kind === "conv" && gname === "dX") {
      td.classList.add("hl");
      var k = P.n - P.m + 1, nums = [], count = 0;
      for (a = 0; a < P.m; a++) for (b = 0; b < P.m; b++) {
        if (i - a >= 0 && i - a < k && j - b >= 0 && j - b < k) {
          cell("dE", i - a, j - b).classList.add("hl"); cell("W", a, b).classList.add("hl2"); count++;
          if (terms.length < 4) { terms.push("W_{" + a + b + "}\\,\\partial E_{" + (i - a) + (j - b) + "}"); nums.push(texNum(P.W[a][b]) + "\\cdot" + texNum(P.dE[i - a][j - b])); }
        }
      }
      var more = count > terms.length ? " + \\dots" : "";
      setTex(f, "\\partial X_{" + i + j + "} = \\sum_{ab} W_{ab}\\, \\partial E_{(" + i + "-a)(" + j + "-b)} = " + (terms.join(" + ") || "0") + more +
        (terms.length ? " = " + nums.join(" + ") + more : "") + " = " + texNum(P.dX[i][j]));
    } else if (P.kind === "relu" && td.hasAttribute("data-k")) {
      var q = +td.getAttribute("data-k"), open = P.switch[q];
      setTex(f, "y_{" + q + "} = \\max(0, " + texNum(P.x[q]) + ") = " + texNum(P.y[q]) + (P.g_in ? ", \\quad \\frac{\\partial E}{\\partial x_{" + q + "}} = \\partial E_{" + q + "} \\cdot \\operatorname{step}(y_{" + q + "}) = " +
        texNum(P.g_in[q]) + " \\cdot " + (open ? 1 : 0) + " = " + texNum(P.g_out[q]) + "\\ \\text{(switch " + (open ? "open" : "closed") + ")}" : ""));
    } else if (P.kind === "lrn" && td.hasAttribute("data-k")) {
      var l = +td.getAttribute("data-k");
      pic.querySelectorAll('[data-grid=lrn] td[data-k="' + l + '"]').forEach(function (c) { c.classList.add("hl2"); });
      var lrnTex = "y_{" + l + "} = x_{" + l + "}\\, \\mathrm{scale}_{" + l + "}^{-\\beta} = " + texNum(P.x[l]) + " \\cdot " + texNum(P.scale[l]) + "^{-" + texNum(P.beta) + "} = " + texNum(P.y[l]);
      if (P.dx) {
        lrnTex += " \\\\ \\frac{\\partial E}{\\partial x_{" + l + "}} = \\partial y_{" + l + "}\\, \\mathrm{scale}_{" + l + "}^{-\\beta} - 2 \\alpha \\beta\\, x_{" + l + "}\\, S^{\\top}\\!\\left(\\tfrac{\\partial y \\cdot y}{\\mathrm{scale}}\\right)_{" + l + "} = " +
          texNum(P.dy[l]) + " \\cdot " + texNum(P.scale[l]) + "^{-" + texNum(P.beta) + "} - 2 \\cdot " + texNum(P.alpha) + " \\cdot " + texNum(P.beta) + " \\cdot " + texNum(P.x[l]) + " \\cdot " + texNum(P.st[l]) + " = " + texNum(P.dx[l]);
      }
      setTex(f, "\\begin{gathered} " + lrnTex + " \\end{gathered}");
    } else if (P.kind === "pool") {
      var row = ev.target.closest("tr[data-window]");
      if (!row) return;
      var w = P.windows[+row.getAttribute("data-window")];
      for (a = 0; a < P.size[0]; a++) for (b = 0; b < P.size[1]; b++) cell("X", w.r0 + a, w.c0 + b).classList.add("hl2");
      cell("X", w.argmax[0], w.argmax[1]).classList.add("hl");
      if (P.dX) cell("dX", w.argmax[0], w.argmax[1]).classList.add("hl");
      setTex(f, "Y_{" + w.i + w.j + "} = \\max_{ab} X_{(" + w.i * P.stride[0] + "+a)(" + w.j * P.stride[1] + "+b)} = X_{" + w.argmax[0] + w.argmax[1] + "} = " + texNum(w.max) +
        (P.dX ? ", \\quad \\partial X_{" + w.argmax[0] + w.argmax[1] + "} \\mathrel{+}= \\partial E_{" + w.i + w.j + "} = " + texNum(w.dE) + "\\ \\text{(the window's other inputs: 0)}" : ""));
    }
  });
  function setTex(el, src) { el.setAttribute("data-tex", src); el.innerHTML = tex(src, false); }
  api.tex = tex;
  function pictureIdOf() { var n = NODE[S.selected]; return n ? (n.vjp_of !== undefined ? n.vjp_of : n.id) : null; }

  /* ------------------------------------------------------------------ gradient path */
  function gradientPath(gradId) {
    // nodes on a path from the loss's seed to dE/dW: ancestors of dE/dW reached from a seed
    var anc = new Set(), stack = [gradId];
    while (stack.length) {
      var id = stack.pop();
      if (anc.has(id) || !NODE[id]) continue;
      anc.add(id);
      NODE[id].inputs.forEach(function (i) { stack.push(i); });
    }
    var path = new Set(), seeds = [];
    anc.forEach(function (id) { var n = NODE[id]; if (n.backward && n.kind === "constant" && n.gradient_of !== undefined) seeds.push(id); });
    stack = seeds.slice();
    while (stack.length) {
      var s = stack.pop();
      if (path.has(s)) continue;
      path.add(s);
      NODE[s].users.forEach(function (u) { if (anc.has(u)) stack.push(u); });
    }
    // values read by the path from off it: forward values, and what the backward computes
    // from them alone (ReLU's switch y > 0, the pooling argmax), with their forward inputs
    var reused = new Set();
    stack = [];
    path.forEach(function (id) { stack.push.apply(stack, NODE[id].inputs); });
    while (stack.length) {
      var r = stack.pop(), n = NODE[r];
      if (path.has(r) || reused.has(r) || !n || n.kind === "constant") continue;
      reused.add(r);
      if (n.backward) stack.push.apply(stack, n.inputs);
    }
    return { path: path, reused: reused };
  }
  api.gradientPath = gradientPath;
  function setParam(name) {
    S.param = name; S.lit = new Set(); S.reused = new Set();
    var p = D.params.filter(function (q) { return q.name === name; })[0];
    if (p && p.grad !== null) { var r = gradientPath(p.grad); S.lit = r.path; S.reused = r.reused; }
    api.lit = Array.from(S.lit); api.reusedNodes = Array.from(S.reused);
    applyClasses();
    if (p && p.grad !== null) select(p.grad);
  }
  api.setParam = setParam;

  /* ------------------------------------------------------------------ stepping through backprop */
  var schedule = D.backward_schedule.filter(function (id) { return NODE[id]; });
  function showStep(k) {
    if (!schedule.length) { $("gd-step-count").textContent = "no backward pass"; return; }
    S.step = Math.max(0, Math.min(schedule.length - 1, k));
    var id = schedule[S.step], n = NODE[id];
    if (S.graph >= 0) { S.graph = -1; $("gd-graph").value = "-1"; render(); }
    reveal(id);
    select(id);
    centerOn(id);
    $("gd-step-count").textContent = " " + (S.step + 1) + " / " + schedule.length;
    var info = $("gd-step-info");
    info.hidden = false;
    var src = n.vjp_of !== undefined ? NODE[n.vjp_of] : null;
    info.innerHTML = '<b>backward step ' + (S.step + 1) + " of " + schedule.length + '</b>: <span data-step-node="' + id + '">' + esc(n.name) + "</span> = " + esc(n.label) +
      (src ? "<br>from the VJP of " + esc(src.name) + " (" + esc(src.op) + ")" : (n.gradient_of !== undefined ? "<br>sums the gradients reaching " + esc(NODE[n.gradient_of].name) : "")) +
      stepFormula(n, src);
  }
  // the rule this step applies: a gradient op's own formula (case 2 for conv2d_grad_input, the switch for
  // relu_grad, the multiplexer for max_pool2d_grad), else the VJP rule of the forward op that built it
  function stepFormula(n, src) {
    var F = D.formulas || {}, op = n.grad_op && F[n.op] ? n.op : src && F[src.op] ? src.op : null;
    if (!op) return "";
    return '<div class="gd-tex" data-tex-op="' + esc(op) + '">' + tex(op === n.op && n.grad_op ? F[op].forward : F[op].vjp, true) + "</div>";
  }
  api.step = function (d) { showStep(S.step + (d === undefined ? 1 : d)); };
  api.schedule = schedule;
  $("gd-step-next").addEventListener("click", function () { showStep(S.step + 1); });
  $("gd-step-prev").addEventListener("click", function () { showStep(S.step - 1); });
  document.addEventListener("keydown", function (ev) {
    if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT")) return;
    if (ev.key === "ArrowRight" || ev.key === "ArrowDown") { ev.preventDefault(); showStep(S.step + 1); }
    else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") { ev.preventDefault(); showStep(S.step - 1); }
  });

  /* ------------------------------------------------------------------ search */
  var results = $("gd-results");
  function search(q) {
    q = q.trim().toLowerCase(); S.matches = new Set();
    if (!q) { results.innerHTML = ""; applyClasses(); return []; }
    var found = [];
    currentNodeIds().forEach(function (id) {
      var n = NODE[id];
      if (n && (n.name.toLowerCase().indexOf(q) >= 0 || n.op.toLowerCase().indexOf(q) >= 0 || n.scope.toLowerCase().indexOf(q) >= 0)) { S.matches.add(id); found.push(id); }
    });
    results.innerHTML = found.slice(0, 40).map(function (id) { return '<li data-goto="' + id + '">' + esc(NODE[id].name) + '<span class="gd-op">' + esc(NODE[id].op) + "</span></li>"; }).join("") +
      (found.length > 40 ? "<li>\u2026 " + (found.length - 40) + " more</li>" : "");
    applyClasses();
    return found;
  }
  api.search = search;
  $("gd-search").addEventListener("input", function () { search(this.value); });
  $("gd-search").addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") { var first = results.querySelector("li[data-goto]"); if (first) first.click(); }
    if (ev.key === "Escape") { this.value = ""; search(""); }
  });
  results.addEventListener("click", function (ev) {
    var li = ev.target.closest("li[data-goto]");
    if (!li) return;
    var id = +li.getAttribute("data-goto");
    results.innerHTML = "";
    reveal(id); select(id); centerOn(id);
  });

  /* ------------------------------------------------------------------ memory plan */
  function fmtBytes(b) { return b >= 1 << 20 ? (b / (1 << 20)).toFixed(1) + " MiB" : b >= 1024 ? (b / 1024).toFixed(1) + " KiB" : b + " B"; }
  function renderMemory() {
    var M = D.program.memory, svg = $("gd-memory-svg"), W = Math.max(400, svg.getBoundingClientRect().width || 800), H = 130;
    // lanes: the program's real buffers where it has run (reuse shows as bars sharing a lane),
    // else lifetimes packed greedily; outputs the kernels allocate go below
    var lanes = [], bufs = M.buffers.slice().sort(function (a, b) { return a.start - b.start; });
    var planned = M.planned, base = planned ? planned.sizes.length : 0;
    bufs.forEach(function (b) {
      if (planned && b.buffer !== null && b.buffer !== undefined) { b.lane = b.buffer; lanes[b.lane] = Math.max(lanes[b.lane] || 0, b.end); return; }
      var l = base; while (lanes[l] !== undefined && lanes[l] >= b.start) l++;
      lanes[l] = b.end; b.lane = l;
    });
    var sx = (W - 20) / Math.max(1, M.steps), laneH = Math.max(2, Math.min(8, 70 / Math.max(1, lanes.length))), peak = M.peak_bytes || 1;
    var h = [];
    var pts = M.live.map(function (v, i) { return (10 + i * sx).toFixed(1) + "," + (50 - 45 * v / peak).toFixed(1); });
    h.push('<polyline points="' + pts.join(" ") + '" fill="none" stroke="#444"/>');
    h.push('<line x1="' + (10 + M.peak_step * sx) + '" x2="' + (10 + M.peak_step * sx) + '" y1="0" y2="' + H + '" stroke="#e31a1c" stroke-dasharray="3 2"/>');
    bufs.forEach(function (b) {
      h.push('<rect class="buf' + (b.backward ? " bwd" : "") + (planned && b.buffer !== null && b.buffer !== undefined ? " planned" : "") + '" data-id="' + b.id + '" data-lane="' + b.lane + '" x="' + (10 + b.start * sx).toFixed(1) + '" y="' + (55 + b.lane * laneH).toFixed(1) + '" width="' + Math.max(1, (b.end - b.start + 1) * sx).toFixed(1) + '" height="' + (laneH - 0.5) + '"><title>' + esc(b.name) + ": " + fmtBytes(b.bytes) + ", steps " + b.start + "-" + b.end + "</title></rect>");
    });
    svg.innerHTML = h.join("");
    $("gd-memory-summary").textContent = "(" + M.buffers.length + " values over " + M.steps + " scheduled nodes; live bytes at batch " + M.batch + ", peak " + fmtBytes(M.peak_bytes) + " at step " + M.peak_step +
      (planned ? "; the program's plan: " + planned.outputs + " outputs in " + planned.sizes.length + " reused buffers, " + fmtBytes(planned.total_bytes) + " in all (one lane each, top)" : "; not run yet: no planned buffers") + ")";
  }
  if (D.program) {
    $("gd-memory").hidden = false;
    $("gd-memory-svg").addEventListener("click", function (ev) {
      var r = ev.target.closest("rect.buf"); if (!r) return;
      var id = +r.getAttribute("data-id");
      S.graph = D.program.passes.length - 1; $("gd-graph").value = String(S.graph);
      reveal(id); render(); select(id); centerOn(id);
    });
  }

  /* ------------------------------------------------------------------ one SGD step, the whole network */
  function updateOverview() {
    var U = D.update;
    if (!U) return "";
    var h = '<h3>one SGD step on this batch</h3><div class="gd-update-all">';
    h += tex("v \\leftarrow \\mu\\, v - \\eta\\, (\\lambda\\, w + \\tfrac{\\partial E}{\\partial w}), \\quad w' = w + v", true);
    h += "<div>" + tex("\\eta = " + texNum(U.lr) + ",\\ \\mu = " + texNum(U.momentum) + ",\\ \\lambda = " + texNum(U.weight_decay)) + ' <span class="gd-hint">(' + esc(U.source) + ")</span></div>";
    if (U.loss_before !== undefined) {
      h += '<div class="gd-loss-step">loss on this batch: <b data-loss="before">' + num(U.loss_before) + "</b> \u2192 <b data-loss=\"after\">" + (U.loss_after === undefined ? "?" : num(U.loss_after)) + "</b> after the step</div>";
    }
    var lo = -6, hi = 0;  // the ratio's bar: log10 from 1e-6 to 1
    h += '<table class="gd-update-table"><tr><th>parameter</th><th>\u2016w\u2016</th><th>\u2016v\u2016</th><th>\u2016v\u2016/\u2016w\u2016</th><th></th><th>w \u2192 w\u2032, v</th></tr>';
    U.params.forEach(function (u) {
      var r = u.ratio, f = r ? Math.max(0, Math.min(1, (Math.log10(r) - lo) / (hi - lo))) : 0;
      var pics = "";
      ["before", "after", "v"].forEach(function (k) { var th = u["thumbs_" + k]; if (th) pics += '<img class="gd-update-pic" data-part="' + k + '" title="' + k + ', filter 0" src="' + thumbURL(th, 0) + '">'; });
      h += '<tr data-update="' + esc(u.name) + '"><td><span class="gd-link" data-goto="' + u.id + '">' + esc(u.name) + "</span></td><td>" + num(u.before.norm) + "</td><td>" + num(u.v.norm) + "</td><td>" + (r === null ? "w = 0" : r.toExponential(1)) +
        '</td><td><svg width="80" height="10"><rect width="80" height="10" fill="#eee"></rect><rect class="gd-ratio" width="' + (80 * f).toFixed(1) + '" height="10"></rect><line x1="' + (80 * 3 / 6) + '" x2="' + (80 * 3 / 6) + '" y1="0" y2="10" stroke="#333"></line></svg></td><td>' + pics + "</td></tr>";
    });
    h += '</table><div class="gd-hint">The bar: the ratio on a log scale from 1e-6 to 1, the mark at 1e-3 (the usual rule of thumb). The pictures: filter 0 before, after and the step v, each scaled to its own range (a step of 1e-3 leaves the filter looking the same). Click a parameter for its histograms.</div></div>';
    return h;
  }
  function showUpdate() {
    S.selected = null;
    $("gd-details").innerHTML = updateOverview();
    applyClasses();
  }
  api.showUpdate = showUpdate;

  /* ------------------------------------------------------------------ controls */
  $("gd-title").textContent = D.title;
  if (D.program) {
    D.program.passes.forEach(function (p, k) {
      var o = document.createElement("option"); o.value = String(k);
      var fired = Object.keys(p.rules || {}).map(function (r) { return r + " x" + p.rules[r]; });  // rewrite rules that fired
      o.textContent = "after " + p.name + (fired.length ? " (" + fired.join(", ") + ")" : "") + (k === D.program.passes.length - 1 ? " (the schedule)" : "");
      $("gd-graph").appendChild(o);
    });
    if (D.program.profile) $("gd-profile-label").hidden = false;
  } else { $("gd-graph-label").hidden = true; }
  D.params.forEach(function (p) {
    var o = document.createElement("option"); o.value = p.name; o.textContent = p.name + (p.grad === null ? " (no gradient in the graph)" : "");
    if (p.grad === null) o.disabled = true;
    $("gd-param").appendChild(o);
  });
  $("gd-view").addEventListener("change", function () { S.view = this.value; render(); fit(); });
  $("gd-graph").addEventListener("change", function () { S.graph = +this.value; S.fused = new Set(); render(); fit(); });
  $("gd-param").addEventListener("change", function () { setParam(this.value); });
  $("gd-expand-all").addEventListener("click", function () { api.expandAll(); fit(); });
  $("gd-collapse-all").addEventListener("click", function () { api.collapseAll(); fit(); });
  $("gd-fit").addEventListener("click", fit);
  $("gd-profile").addEventListener("change", render);
  if (D.update && D.update.params.length) { $("gd-update-btn").hidden = false; $("gd-update-btn").addEventListener("click", showUpdate); }

  render();
  initialView();
  if (D.program) renderMemory();
  api.ready = true;
  document.body.setAttribute("data-ready", "1");
})();
