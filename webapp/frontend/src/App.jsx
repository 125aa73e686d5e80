import { useEffect, useState } from "react";
import { getMe, getModel, logout, onSessionEnded } from "./api.js";
import ErrorNotice from "./ErrorNotice.jsx";
import HistoryList from "./HistoryList.jsx";
import LoginForm from "./LoginForm.jsx";
import { percent } from "./messages.js";
import ResultView from "./ResultView.jsx";
import UploadPanel from "./UploadPanel.jsx";

function ModelSummary({ model }) {
  if (model.error) return <ErrorNotice error={model.error} />;
  const { metrics } = model.info;
  const ci = metrics.ci95?.accuracy;
  const gate = model.info.page_gate;
  const calibration = model.info.calibration;
  return (
    <>
      <p className="model-summary">
        Model <strong>{model.info.model}</strong> · dataset <strong>{model.info.dataset}</strong> · test accuracy{" "}
        <strong>{percent(metrics.accuracy)}</strong>
        {ci && ` (95 % CI ${percent(ci[0])} – ${percent(ci[1])}, n = ${metrics.n_test})`}
      </p>
      {calibration && <p className="model-summary calibration-note">{calibration.statement}</p>}
      {gate && (
        <p className="model-summary gate-note">
          Only 12-lead ECG report pages are classified. Refused without a class: {gate.rejects}.
        </p>
      )}
    </>
  );
}

export default function App() {
  const [user, setUser] = useState(undefined); // undefined: still asking, null: signed out
  const [model, setModel] = useState(null); // { info } or { error }
  const [result, setResult] = useState(null);
  const [uploads, setUploads] = useState(0); // remounts the history after each upload or deletion
  const [notice, setNotice] = useState(null);

  useEffect(() => {
    getMe().then(setUser, () => setUser(null));
  }, []);

  // any 401/403 "not signed in" answer (session ended, signed out in another tab, token revoked)
  useEffect(
    () =>
      onSessionEnded(() => {
        setUser(null);
        setResult(null);
        setNotice("Your session has ended. Please sign in again.");
      }),
    [],
  );

  function signIn(signedIn) {
    setNotice(null);
    setUser(signedIn);
  }

  useEffect(() => {
    if (user) getModel().then((info) => setModel({ info }), (error) => setModel({ error }));
  }, [user]);

  function signOut() {
    // Sign out here even if the server call fails; its session then simply expires.
    logout()
      .catch(() => null)
      .then(() => {
        setUser(null);
        setResult(null);
      });
  }

  function showUpload(classification) {
    setResult(classification);
    setUploads((n) => n + 1);
  }

  function forgetResult() {
    setResult(null);
    setUploads((n) => n + 1);
  }

  return (
    <>
      <header className="topbar">
        <div>
          <h1>ECG image classifier</h1>
          <p className="subtitle">12-lead ECG → myocardial infarction, history of MI, abnormal heartbeat or normal</p>
        </div>
        {user && (
          <div className="user">
            <span>
              Signed in as <strong>{user.username}</strong>
            </span>
            <button type="button" className="secondary" onClick={signOut}>
              Sign out
            </button>
          </div>
        )}
      </header>
      <p className="research-note">Research tool — not for clinical diagnosis.</p>
      {model?.info?.synthetic && (
        <div className="banner" role="note">
          This model was trained on SYNTHETIC ECG images (the offline twin), not on patient data; its predictions are
          meaningless for real ECGs.
        </div>
      )}
      <main>
        {user === undefined && <p className="muted">Checking your session…</p>}
        {user === null && notice && (
          <p className="notice" role="status">
            {notice}
          </p>
        )}
        {user === null && <LoginForm onLogin={signIn} />}
        {user && (
          <>
            {model && <ModelSummary model={model} />}
            <div className="layout">
              <div className="side">
                <UploadPanel onResult={showUpload} />
                <HistoryList key={uploads} selectedId={result?.id} onSelect={setResult} />
              </div>
              {result ? (
                <ResultView result={result} onDeleted={forgetResult} />
              ) : (
                <section className="card placeholder">
                  <p className="muted">Choose an ECG image and press “Analyse ECG”, or pick an earlier result from the history.</p>
                </section>
              )}
            </div>
          </>
        )}
      </main>
    </>
  );
}
