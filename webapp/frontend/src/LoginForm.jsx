import { useState } from "react";
import { login } from "./api.js";
import ErrorNotice from "./ErrorNotice.jsx";

export default function LoginForm({ onLogin }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);

  async function submit(event) {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    setBusy(true);
    setError(null);
    try {
      onLogin(await login(form.get("username"), form.get("password")));
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  }

  return (
    <section className="card login" aria-labelledby="login-title">
      <h2 id="login-title">Sign in</h2>
      <form onSubmit={submit}>
        <label htmlFor="username">Username</label>
        <input id="username" name="username" autoComplete="username" required />
        <label htmlFor="password">Password</label>
        <input id="password" name="password" type="password" autoComplete="current-password" required />
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        {error && <ErrorNotice error={error} />}
      </form>
    </section>
  );
}
