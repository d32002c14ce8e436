// noVNC ships no type declarations; the few members the console view uses.
declare module "@novnc/novnc" {
  export default class RFB extends EventTarget {
    constructor(target: HTMLElement, url: string, options?: { wsProtocols?: string[]; shared?: boolean });
    scaleViewport: boolean;
    resizeSession: boolean;
    viewOnly: boolean;
    focusOnClick: boolean;
    disconnect(): void;
    sendCtrlAltDel(): void;
    sendKey(keysym: number, code: string | null, down?: boolean): void;
    /** Offers text to the server's clipboard (the extended clipboard when it has one). */
    clipboardPasteFrom(text: string): void;
    focus(): void;
  }
}
