import { useEffect, useState } from "react";
import { listClassifications } from "./api.js";
import ErrorNotice from "./ErrorNotice.jsx";

// Past classifications, newest first, one server page at a time.
export default function HistoryList({ selectedId, onSelect }) {
  const [page, setPage] = useState(1);
  const [loaded, setLoaded] = useState(null); // { page, data } or { page, error }

  useEffect(() => {
    let current = true;
    listClassifications(page).then(
      (data) => current && setLoaded({ page, data }),
      (error) => current && setLoaded({ page, error }),
    );
    return () => {
      current = false;
    };
  }, [page]);

  const ready = loaded?.page === page;
  const data = ready ? loaded.data : null;
  return (
    <section className="card" aria-labelledby="history-title" aria-busy={!ready}>
      <h2 id="history-title">History</h2>
      {!ready && <p className="muted">Loading…</p>}
      {ready && loaded.error && <ErrorNotice error={loaded.error} />}
      {data && data.count === 0 && <p className="muted">No ECGs analysed yet.</p>}
      {data && data.results.length > 0 && (
        <ol className="history">
          {data.results.map((item) => (
            <li key={item.id}>
              <button
                type="button"
                className="history-item"
                aria-current={item.id === selectedId ? "true" : undefined}
                onClick={() => onSelect(item)}
              >
                <span className="history-class">
                  {item.class_name} <span className="code">({item.class_code})</span>
                </span>
                <span className="history-meta">
                  {item.filename} · {new Date(item.created).toLocaleString()}
                </span>
              </button>
            </li>
          ))}
        </ol>
      )}
      {data && (data.next || data.previous) && (
        <nav className="pager" aria-label="History pages">
          <button type="button" className="secondary" disabled={!data.previous} onClick={() => setPage(page - 1)}>
            ← Newer
          </button>
          <span>
            Page {page} · {data.count} in total
          </span>
          <button type="button" className="secondary" disabled={!data.next} onClick={() => setPage(page + 1)}>
            Older →
          </button>
        </nav>
      )}
    </section>
  );
}
