import { useState } from "react";
import { classify } from "./api.js";
import ErrorNotice from "./ErrorNotice.jsx";

const ACCEPT = "image/jpeg,image/png,image/webp,image/tiff,.jpg,.jpeg,.png,.webp,.tif,.tiff";

function formatSize(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  return bytes >= 1024 ? `${Math.round(bytes / 1024)} kB` : `${bytes} B`;
}

export default function UploadPanel({ onResult }) {
  const [chosen, setChosen] = useState(null); // { file, url, previewFailed }
  const [dragging, setDragging] = useState(false);
  const [busy, setBusy] = useState(false);
  const [status, setStatus] = useState("");
  const [error, setError] = useState(null);

  function choose(file) {
    if (!file) return;
    if (chosen) URL.revokeObjectURL(chosen.url);
    setChosen({ file, url: URL.createObjectURL(file), previewFailed: false });
    setStatus(`Selected ${file.name}. Press “Analyse ECG” to classify it.`);
    setError(null);
  }

  function drop(event) {
    event.preventDefault();
    setDragging(false);
    choose(event.dataTransfer.files[0]);
  }

  async function analyse(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    setStatus("Uploading and analysing the ECG image…");
    try {
      const result = await classify(chosen.file);
      setStatus(`Analysis complete: ${result.class_name} (${result.class_code}).`);
      onResult(result);
    } catch (err) {
      setStatus("");
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <section className="card" aria-labelledby="upload-title">
      <h2 id="upload-title">Analyse an ECG</h2>
      <form onSubmit={analyse}>
        <div
          className={`dropzone${dragging ? " dragging" : ""}`}
          onDragOver={(e) => {
            e.preventDefault();
            setDragging(true);
          }}
          onDragLeave={() => setDragging(false)}
          onDrop={drop}
        >
          <input
            id="ecg-file"
            className="visually-hidden"
            type="file"
            accept={ACCEPT}
            onChange={(e) => choose(e.target.files[0])}
          />
          <label htmlFor="ecg-file">
            <span className="button secondary">Choose ECG image…</span>
            <span className="dropzone-hint">or drag and drop it here · JPEG, PNG, WebP or TIFF</span>
          </label>
        </div>
        {chosen && (
          <figure className="preview">
            {chosen.previewFailed ? (
              <p className="muted">No preview available for this file.</p>
            ) : (
              <img
                src={chosen.url}
                alt={`Preview of the chosen file ${chosen.file.name}`}
                onError={() => setChosen({ ...chosen, previewFailed: true })}
              />
            )}
            <figcaption>
              {chosen.file.name} · {formatSize(chosen.file.size)}
            </figcaption>
          </figure>
        )}
        <button type="submit" disabled={!chosen || busy}>
          {busy ? "Analysing…" : "Analyse ECG"}
        </button>
        <p className={`status${busy ? " busy" : ""}`} role="status" aria-live="polite">
          {status}
        </p>
        {error && <ErrorNotice error={error} />}
      </form>
    </section>
  );
}
