/* sbn-bench report: inlined into report.html (no network). Sortable and filterable tables,
   collapsible sections opened by links to them, expand/collapse all. */
(function () {
  "use strict";
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v !== null && v !== "") { var x = parseFloat(v); if (!isNaN(x)) { return x; } }
    return cell.textContent.trim().toLowerCase();
  }
  function compare(a, b) {
    var na = typeof a === "number", nb = typeof b === "number";
    if (na && nb) { return a === b ? 0 : (a < b ? -1 : 1); }
    if (na !== nb) { return na ? -1 : 1; }  /* numbers before text ("—") */
    return a < b ? -1 : (a > b ? 1 : 0);
  }
  function sortBy(table, col, th) {
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (r, i) { r._i = i; });
    rows.sort(function (r1, r2) {
      var c = compare(key(r1.cells[col]), key(r2.cells[col]));
      return (asc ? c : -c) || r1._i - r2._i;  /* stable */
    });
    rows.forEach(function (r) { r.classList.remove("group-start"); body.appendChild(r); });
  }
  function filter(table, text) {
    var q = text.trim().toLowerCase();
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
    });
  }
  function openTarget() {
    if (!location.hash) { return; }
    var el = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    for (var p = el; p; p = p.parentElement) { if (p.tagName === "DETAILS") { p.open = true; } }
    if (el) { el.scrollIntoView(); }
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, col, th); }
      });
    });
  });
  document.querySelectorAll("input.filter").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    input.addEventListener("input", function () { filter(table, input.value); });
  });
  document.querySelectorAll("button[data-details]").forEach(function (b) {
    b.addEventListener("click", function () {
      var open = b.getAttribute("data-details") === "open";
      document.querySelectorAll("details").forEach(function (d) { d.open = open; });
    });
  });
  window.addEventListener("hashchange", openTarget);
  openTarget();
}());
