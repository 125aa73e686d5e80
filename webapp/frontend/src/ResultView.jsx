import { useState } from "react";
import { deleteClassification } from "./api.js";
import ErrorNotice from "./ErrorNotice.jsx";
import ProbabilityBars from "./ProbabilityBars.jsx";

const formatMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);

export default function ResultView({ result, onDeleted }) {
  // A fresh upload carries the heat map inline, a history entry links to it; null without Grad-CAM.
  const heatmap = result.heatmap_png ?? result.heatmap_url;
  const [deleting, setDeleting] = useState(false);
  const [error, setError] = useState(null);

  async function remove() {
    if (!window.confirm(`Delete the ECG ${result.filename} and its result from the server?`)) return;
    setDeleting(true);
    setError(null);
    try {
      await deleteClassification(result.id);
      onDeleted(result.id);
    } catch (err) {
      setError(err);
      setDeleting(false);
    }
  }

  return (
    <section className="card result" aria-labelledby="result-title">
      <h2 id="result-title">Result</h2>
      <p className="prediction">
        Predicted class: <strong>{result.class_name}</strong> <span className="code">({result.class_code})</span>
      </p>
      {result.model.synthetic && (
        <p className="inline-warning">Model trained on synthetic ECG images — this prediction means nothing for a real patient.</p>
      )}
      <ProbabilityBars probabilities={result.probabilities} />
      <div className="figures">
        <figure>
          <img src={result.image_url} alt={`Uploaded 12-lead ECG (${result.filename})`} />
          <figcaption>Uploaded ECG</figcaption>
        </figure>
        {heatmap && (
          <figure>
            <img src={heatmap} alt={`Grad-CAM heat map over the ECG for the predicted class ${result.class_name}`} />
            <figcaption>Grad-CAM: regions that most influenced the prediction</figcaption>
          </figure>
        )}
      </div>
      <dl className="facts">
        <dt>Inference time</dt>
        <dd>
          {formatMs(result.inference_ms)} <span className="muted">(total on server {formatMs(result.total_ms)})</span>
        </dd>
        <dt>File</dt>
        <dd>{result.filename}</dd>
        <dt>Analysed</dt>
        <dd>{new Date(result.created).toLocaleString()}</dd>
        <dt>Model</dt>
        <dd>
          {result.model.name} · {result.model.dataset} · run {result.model.run_id}
        </dd>
      </dl>
      <button type="button" className="secondary" onClick={remove} disabled={deleting}>
        {deleting ? "Deleting…" : "Delete this ECG"}
      </button>
      {error && <ErrorNotice error={error} />}
    </section>
  );
}
