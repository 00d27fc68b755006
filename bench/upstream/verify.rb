# frozen_string_literal: true

# Verifies an access token against a JWK Set with ruby-jwt (the library Omejdn
# signs with); prints the key id it was signed with, or fails.
# ruby -I<ruby-jwt>/lib verify.rb TOKEN_FILE JWKS_FILE AUDIENCE_PREFIX

require 'jwt'
require 'json'

token = File.read(ARGV[0]).strip
jwks = JSON.parse(File.read(ARGV[1]))
payload, header = JWT.decode(token, nil, true, algorithms: %w[RS256 RS512 ES256 ES512], jwks: jwks)
raise "unexpected subject #{payload['sub']}" unless payload['sub'] == 'bench_client'

puts JSON.generate({ 'kid' => header['kid'], 'alg' => header['alg'], 'scope' => payload['scope'] })
