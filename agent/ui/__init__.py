"""The cluster page served at GET / (index.html, app.js, style.css): no library, no CDN."""
