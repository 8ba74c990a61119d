// Bundles src/ into dist/ (one JS, one CSS, index.html) for the relay to embed.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  sourcemap: false,
  target: ["es2020"],
  outfile: "dist/app.js",
  loader: { ".css": "css" },
  logLevel: "warning",
});
copyFileSync("src/index.html", "dist/index.html");
console.log("web: built dist/");
