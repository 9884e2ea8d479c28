// The browser phone's SIP stack: JsSIP (npm, pinned in package.json) bundled into one
// script that defines `window.JsSIP` (`npm run build` writes vendor/jssip.js).
window.JsSIP = require('jssip');
