import { friendlyMessage } from "./messages.js";

// A friendly sentence plus the server's own words, announced to screen readers.
export default function ErrorNotice({ error }) {
  return (
    <div className="error" role="alert">
      <p>{friendlyMessage(error)}</p>
      {error.detail && <p className="error-detail">Details: {error.detail}</p>}
    </div>
  );
}
