// Apply the saved theme before the first paint (no flash); a file, not inline, for CSP.
try {
  var t = localStorage.getItem('kiana.theme')
  if (t === 'dark' || (!t && matchMedia('(prefers-color-scheme: dark)').matches))
    document.documentElement.classList.add('dark')
} catch (e) {}
