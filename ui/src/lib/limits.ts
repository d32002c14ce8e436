// A project's cost controls in words, for the people about to open a session.
import type { ProjectLimits } from "../bindings/ProjectLimits";

/** "Sessions end after 2 h · closed when idle 30 min (CPU under 5 %) · 10 h a week each", or "" without limits. */
export function limitsText(l: ProjectLimits | undefined | null): string {
  if (!l) return "";
  const parts: string[] = [];
  if (l.max_session_minutes != null) parts.push(`sessions end after ${minutes(l.max_session_minutes)}`);
  if (l.idle_minutes != null)
    parts.push(`closed when idle ${minutes(l.idle_minutes)} (no console, no SSH, CPU under ${l.idle_cpu_percent} %)`);
  if (l.weekly_hours != null) parts.push(`${l.weekly_hours} h of sessions a week each`);
  if (parts.length === 0) return "";
  const text = parts.join(" · ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function minutes(n: number): string {
  if (n % 60 === 0) return `${n / 60} h`;
  if (n > 60) return `${Math.floor(n / 60)} h ${n % 60} min`;
  return `${n} min`;
}
