import { useId } from "react";
import { percent } from "./messages.js";

// One labelled meter per class, most probable first; the number is also plain text.
export default function ProbabilityBars({ probabilities }) {
  const idPrefix = useId();
  const sorted = [...probabilities].sort((a, b) => b.probability - a.probability);
  return (
    <ol className="bars" aria-label="Probability of each class">
      {sorted.map(({ code, name, probability }) => {
        const labelId = `${idPrefix}-${code}`;
        return (
          <li key={code} className="bar-row">
            <span id={labelId} className="bar-label">
              {name} <span className="code">({code})</span>
            </span>
            <div
              role="meter"
              aria-labelledby={labelId}
              aria-valuemin={0}
              aria-valuemax={100}
              aria-valuenow={Math.round(probability * 1000) / 10}
              aria-valuetext={percent(probability)}
              className="bar-track"
            >
              <div className="bar-fill" style={{ width: `${probability * 100}%` }} />
            </div>
            <span className="bar-value">{percent(probability)}</span>
          </li>
        );
      })}
    </ol>
  );
}
