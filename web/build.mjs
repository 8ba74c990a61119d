// Bundles src/ into dist/ for the relay to embed: the terminal page (index.html,
// app.js, app.css) and the dashboard (dashboard.html, .js, .css).
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: { app: "src/main.js", dashboard: "src/dashboard.js" },
  bundle: true,
  minify: true,
  sourcemap: false,
  target: ["es2020"],
  outdir: "dist",
  loader: { ".css": "css" },
  logLevel: "warning",
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/dashboard.html", "dist/dashboard.html");
console.log("web: built dist/");
